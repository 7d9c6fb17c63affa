// tern-fault-probe: the two jobs of the fault campaign (bench/faults). The counter owns a port
// and an RPC port under a name; the sender sends it numbered messages and makes numbered calls,
// one at a time, without retrying anything itself. Each side prints one line per message or
// call it is sure of ("sent N" once send returned, "got N" once received, "called N" once the
// call returned N, "handled N" when the handler ran), so that bench/faults can count what was
// lost, duplicated or reordered across a move whatever failed. The counter's ballast is memory
// it writes once and keeps, so that a post-copy move still has pages to serve when the
// destination confirms the commit (the source's `serving_pages` phase). With --hold-lock-s the
// counter holds a file lock for that long from its start, as SQLite inside a transaction does:
// CRIU refuses to dump a job holding one ("Some file locks are hold by dumping tasks"), which is
// how the campaign makes a real dump fail and the source enter `dump_retry_wait`.
// Beside them, on threads of their own, the sender streams numbers through a PortWriter to a
// PortReader of the counter (a direct stream: a connection between the two jobs that either
// move breaks; "streamed N" once flush() returned, that is once the counter had N) and the
// counter prints "streamgot N": a stream that stalls holds only its own thread.
//
//   tern-fault-probe counter --name NAME [--ballast-mb 0] [--hold-lock-s 0]
//   tern-fault-probe sender --name NAME [--interval-ms 20] [--call-every 5]
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <string>
#include <tern/ipc.hpp>
#include <thread>
#include <vector>

#include "../../ipc/examples/example_util.hpp"

namespace {

using namespace std::chrono_literals;
using tern::Channel;

std::mutex print_mutex;

void Print(const char* what, long long n) {
  const std::lock_guard lock(print_mutex);
  std::printf("%s %lld\n", what, n);
  std::fflush(stdout);
}

// Holds an exclusive flock on ./fault-probe.lock (the job's directory) for `seconds`, on a
// thread of its own; the lock goes with the descriptor.
void HoldLock(long seconds) {
  if (seconds <= 0) return;
  const int fd = ::open("fault-probe.lock", O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0 || ::flock(fd, LOCK_EX) != 0) {
    std::perror("tern-fault-probe: cannot hold the lock");
    std::exit(1);
  }
  Print("locked", seconds);
  std::thread([fd, seconds] {
    std::this_thread::sleep_for(std::chrono::seconds(seconds));
    ::close(fd);
    Print("unlocked", seconds);
  }).detach();
}

// Waits for good once the job's IPC is gone with its agent (the known limit): says so once.
[[noreturn]] void Disconnected(const char* what) {
  Print(what, 0);
  for (;;) std::this_thread::sleep_for(1h);
}

bool GoneForGood(const Channel& channel, tern::JobStatus status) {
  return !channel.connected() || status == tern::JobStatus::kInvalidName ||
         status == tern::JobStatus::kDeadName;
}

// The counter's end of the stream: every message handed out, in the order handed out.
void ReadStream(const Channel& channel, std::uint32_t port) {
  tern::PortReader reader(channel, port);
  tern::MessageView message;
  for (;;) {
    auto got = reader.next(message, 1s);
    if (got) {
      Print("streamgot", std::stoll(std::string(message.bytes())));
    } else if (GoneForGood(channel, got.status())) {
      Disconnected("streamdisconnected");
    } else if (got.status() != tern::JobStatus::kTimedOut) {
      std::printf("streamreaderr %s\n", got.error().ToString().c_str());
      std::fflush(stdout);
      std::this_thread::sleep_for(100ms);
    }
  }
}

// The sender's end: one message, then a flush, every `interval_ms`; stops at the first error
// (a PortWriter's error ends its stream).
void WriteStream(const Channel& channel, std::uint32_t port, long interval_ms) {
  tern::PortWriter writer(channel, port);
  for (long long n = 1;; ++n) {
    auto written = writer.write(std::to_string(n));
    auto flushed = written ? writer.flush() : written;
    if (!flushed) {
      std::printf("streamerr %lld %s\n", n, flushed.error().ToString().c_str());
      std::fflush(stdout);
      Disconnected("streamstopped");
    }
    Print("streamed", n);
    std::this_thread::sleep_for(std::chrono::milliseconds(interval_ms));
  }
}

int Counter(const Channel& channel, const std::string& name, long ballast_mb, long hold_lock_s) {
  HoldLock(hold_lock_s);
  // Every page written with data that differs per page, so that CRIU dumps each one.
  std::vector<std::uint64_t> ballast(static_cast<std::size_t>(ballast_mb < 0 ? 0 : ballast_mb) *
                                     (1 << 20) / sizeof(std::uint64_t));
  for (std::size_t i = 0; i < ballast.size(); ++i) ballast[i] = i * 0x9e3779b97f4a7c15ULL;
  // Read back through volatile, so that the compiler keeps the writes.
  const volatile std::uint64_t* kept = ballast.data();
  std::uint64_t sum = 0;
  for (std::size_t i = 0; i < ballast.size(); ++i) sum += kept[i];
  if (!ballast.empty()) Print("ballast", static_cast<long long>(sum >> 1));
  auto port = channel.port_allocate(4096);
  auto rpc = channel.port_allocate();
  auto stream = channel.port_allocate(4096);
  if (!port) return tern::examples::Fail("port_allocate", port.error());
  if (!rpc) return tern::examples::Fail("port_allocate", rpc.error());
  if (!stream) return tern::examples::Fail("port_allocate", stream.error());
  if (auto ok = channel.name_register(name, *port); !ok) {
    return tern::examples::Fail("name_register " + name, ok.error());
  }
  if (auto ok = channel.name_register(name + "-rpc", *rpc); !ok) {
    return tern::examples::Fail("name_register " + name + "-rpc", ok.error());
  }
  if (auto ok = channel.name_register(name + "-stream", *stream); !ok) {
    return tern::examples::Fail("name_register " + name + "-stream", ok.error());
  }
  std::thread(ReadStream, channel, *stream).detach();
  tern::RpcServer server(channel, *rpc, [](const tern::RpcRequest& request) {
    const std::string number(request.bytes());
    Print("handled", std::stoll(number));
    return std::vector<tern::Item>{tern::Item::Bytes(number)};
  });
  Print("ready", 0);
  for (;;) {
    auto message = channel.receive(*port, 1s);
    if (!message) {
      // An agent killed under the job takes its channel along: the job itself lives on (one
      // copy is what the campaign counts), and says so once.
      // So does one whose channel re-attached to a restarted agent that did not keep its rights
      // (docs/ipc.md "A channel the job reconnects"); one that kept them (its journal, "Port
      // homes that survive their agent") answers the next receive.
      if (GoneForGood(channel, message.status())) Disconnected("disconnected");
      continue;
    }
    Print("got", std::stoll(std::string(tern::FirstBytes(*message))));
  }
}

int Sender(const Channel& channel, const std::string& name, long interval_ms, long call_every) {
  auto found = tern::examples::LookupWaiting(channel, name, 60s);
  if (!found) return tern::examples::Fail("name_lookup " + name, found.error());
  auto found_rpc = tern::examples::LookupWaiting(channel, name + "-rpc", 60s);
  if (!found_rpc) return tern::examples::Fail("name_lookup " + name + "-rpc", found_rpc.error());
  auto found_stream = tern::examples::LookupWaiting(channel, name + "-stream", 60s);
  if (!found_stream) {
    return tern::examples::Fail("name_lookup " + name + "-stream", found_stream.error());
  }
  std::thread(WriteStream, channel, *found_stream, interval_ms).detach();
  const std::uint32_t port = *found, rpc = *found_rpc;
  long long calls = 0;
  for (long long n = 1;; ++n) {
    tern::Message message;
    message.destination = port;
    message.items.push_back(tern::Item::Bytes(std::to_string(n)));
    if (auto sent = channel.send(message, tern::FullPolicy::kWait, 60s); sent) {
      Print("sent", n);
    } else {
      std::printf("senderr %lld %s\n", n, sent.error().ToString().c_str());
      std::fflush(stdout);
    }
    if (call_every > 0 && n % call_every == 0) {
      ++calls;
      auto answer = channel.call(rpc, std::to_string(calls));
      if (answer && *answer == std::to_string(calls)) {
        Print("called", calls);
      } else {
        std::printf("callerr %lld %s\n", calls,
                    answer ? ("answer " + *answer).c_str() : answer.error().ToString().c_str());
        std::fflush(stdout);
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(interval_ms));
  }
}

}  // namespace

int main(int argc, char** argv) {
  const tern::examples::Args args(argc, argv);
  const std::string name = args.Get("name", "");
  if (args.help() || !args.bad().empty() || name.empty() ||
      (args.mode() != "counter" && args.mode() != "sender")) {
    if (!args.bad().empty()) std::fprintf(stderr, "%s\n", args.bad().c_str());
    std::fprintf(stderr,
                 "usage: tern-fault-probe counter --name NAME [--ballast-mb 0] "
                 "[--hold-lock-s 0]\n"
                 "       tern-fault-probe sender --name NAME [--interval-ms 20] "
                 "[--call-every 5]\n");
    return args.help() ? 0 : 2;
  }
  const Channel channel;
  if (args.mode() == "counter") {
    return Counter(channel, name, args.Int("ballast-mb", 0), args.Int("hold-lock-s", 0));
  }
  return Sender(channel, name, args.Int("interval-ms", 20), args.Int("call-every", 5));
}
