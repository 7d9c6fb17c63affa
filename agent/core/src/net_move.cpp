#include "net_move.hpp"

#include <spdlog/spdlog.h>

#include <tern/jobs/job_network.hpp>
#include <tern/migrate/criu.hpp>
#include <tern/process_tree.hpp>

namespace tern::agent {

Expected<void> LockJobNetwork(const jobs::JobRecord& job) {
  if (job.net_address.empty()) return {};
  if (auto down = jobs::SetJobLinkUp(job.id, job.net_address, false); !down) {
    return Fail("cannot lock job " + job.id + "'s network: " + down.error().message);
  }
  return {};
}

void UnlockJobNetwork(const jobs::JobRecord& job, const std::string& uplink) {
  if (job.net_address.empty()) return;
  // Before the job runs again: a socket still in repair mode would make its reads fail.
  const int repaired = EndTcpRepair(job.pid);
  if (auto up = jobs::SetJobLinkUp(job.id, job.net_address, true); !up) {
    spdlog::error("job {}: cannot unlock its network: {}", job.id, up.error().message);
    return;
  }
  if (auto arp = jobs::SendGratuitousArp(uplink, job.net_address); !arp) {
    spdlog::warn("job {}: {}", job.id, arp.error().message);
  }
  spdlog::info("job {}: network unlocked ({} TCP connections out of repair)", job.id, repaired);
}

void ClaimJobAddress(const jobs::JobRecord& job, const std::string& uplink) {
  if (job.net_address.empty()) return;
  if (auto up = jobs::SetJobLinkUp(job.id, job.net_address, true); !up) {
    spdlog::error("job {}: cannot route {} here: {}", job.id, job.net_address, up.error().message);
    return;
  }
  if (auto arp = jobs::SendGratuitousArp(uplink, job.net_address); !arp) {
    spdlog::warn("job {}: {}", job.id, arp.error().message);
  }
}

ino_t JobNetns(const jobs::JobRecord& job) {
  return job.net_address.empty() ? 0 : migrate::NetNamespaceInode(job.pid);
}

}  // namespace tern::agent
