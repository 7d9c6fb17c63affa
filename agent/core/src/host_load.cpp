#include "tern/agent/host_load.hpp"

#include <net/if.h>
#include <netlink/netlink.h>
#include <netlink/route/link.h>
#include <unistd.h>

#include <fstream>
#include <memory>
#include <sstream>

namespace tern::agent {
namespace {

struct NlSocketDeleter {
  void operator()(nl_sock* socket) const { nl_socket_free(socket); }
};
struct NlCacheDeleter {
  void operator()(nl_cache* cache) const { nl_cache_free(cache); }
};

// Sums the byte counters of every non-loopback link in this network namespace.
bool ReadLinkBytes(std::uint64_t& rx, std::uint64_t& tx) {
  std::unique_ptr<nl_sock, NlSocketDeleter> socket(nl_socket_alloc());
  if (!socket || nl_connect(socket.get(), NETLINK_ROUTE) < 0) return false;
  nl_cache* raw_cache = nullptr;
  if (rtnl_link_alloc_cache(socket.get(), AF_UNSPEC, &raw_cache) < 0) return false;
  std::unique_ptr<nl_cache, NlCacheDeleter> cache(raw_cache);
  rx = tx = 0;
  for (nl_object* object = nl_cache_get_first(cache.get()); object != nullptr;
       object = nl_cache_get_next(object)) {
    auto* link = reinterpret_cast<rtnl_link*>(object);
    if ((rtnl_link_get_flags(link) & IFF_LOOPBACK) != 0) continue;
    rx += rtnl_link_get_stat(link, RTNL_LINK_RX_BYTES);
    tx += rtnl_link_get_stat(link, RTNL_LINK_TX_BYTES);
  }
  return true;
}

void ReadLoadAvg(HostLoad& load) {
  std::ifstream file("/proc/loadavg");
  std::string load1, load5, load15, tasks;
  if (!(file >> load1 >> load5 >> load15 >> tasks)) {
    load.problems.push_back("/proc/loadavg unreadable");
    return;
  }
  load.figures.load1 = std::stod(load1);
  load.figures.runnable = std::stoi(tasks.substr(0, tasks.find('/')));
}

void ReadMemInfo(HostLoad& load) {
  std::ifstream file("/proc/meminfo");
  std::string key;
  std::uint64_t kib = 0;
  std::string unit;
  while (file >> key >> kib) {
    std::getline(file, unit);
    if (key == "MemTotal:") load.figures.mem_total_bytes = kib * 1024;
    if (key == "MemAvailable:") load.figures.mem_free_bytes = kib * 1024;
  }
  if (load.figures.mem_total_bytes == 0) load.problems.push_back("/proc/meminfo unreadable");
}

double AverageCpuMhz() {
  std::ifstream file("/proc/cpuinfo");
  std::string line;
  double total = 0;
  int count = 0;
  while (std::getline(file, line)) {
    if (line.rfind("cpu MHz", 0) != 0) continue;
    const auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    total += std::stod(line.substr(colon + 1));
    ++count;
  }
  return count == 0 ? 0 : total / count;
}

}  // namespace

HostLoad HostLoadSampler::Sample(std::chrono::steady_clock::time_point now) {
  HostLoad load;
  ReadLoadAvg(load);
  ReadMemInfo(load);
  load.figures.cpus = static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
  load.figures.cpu_mhz = AverageCpuMhz();
  if (ReadLinkBytes(load.net_rx_bytes, load.net_tx_bytes)) {
    const std::uint64_t total = load.net_rx_bytes + load.net_tx_bytes;
    if (have_previous_ && now > previous_time_ && total >= previous_net_bytes_) {
      const double seconds = std::chrono::duration<double>(now - previous_time_).count();
      load.figures.link_bytes_per_s = static_cast<double>(total - previous_net_bytes_) / seconds;
    }
    previous_net_bytes_ = total;
    previous_time_ = now;
    have_previous_ = true;
  } else {
    load.problems.push_back("rtnetlink link statistics unreadable");
  }
  return load;
}

}  // namespace tern::agent
