// PortRouter, quota.cpp
// Quotas (IpcLimits): what each sender has waiting at this home, and the over-quota answer.
#include "state.hpp"

namespace tern::ipc {

Sender PortRouter::State::SenderOf(const Envelope& e) {
  if (!e.ticket || e.job.empty()) return {};
  return {e.origin, e.job};
}

bool PortRouter::State::Fits(const Sender& sender, std::uint64_t cost) const {
  if (sender.second.empty()) return true;
  auto it = charged.find(sender);
  const std::uint64_t now = it == charged.end() ? 0 : it->second;
  return now + cost <= limits.max_queued_bytes_per_job;
}

void PortRouter::State::Charge(const Sender& sender, std::uint64_t cost) {
  if (!sender.second.empty() && cost > 0) charged[sender] += cost;
}

void PortRouter::State::Uncharge(const Sender& sender, std::uint64_t cost) {
  if (sender.second.empty() || cost == 0) return;
  auto it = charged.find(sender);
  if (it == charged.end()) return;
  it->second -= std::min(it->second, cost);
  if (it->second == 0) charged.erase(it);
}

void PortRouter::State::OverQuota(const Envelope& e) {
  auto it = charged.find(SenderOf(e));
  EnqueueResult(
      e, JobStatus::kOverQuota,
      "over the job's IPC quota: " + std::to_string(it == charged.end() ? 0 : it->second) +
          " bytes of its messages wait in queues on node " + std::to_string(self) +
          ", and this send needs " + std::to_string(Cost(e)) + " more of the " +
          std::to_string(limits.max_queued_bytes_per_job) +
          " allowed ([ipc] max_queued_bytes_per_job)");
}

}  // namespace tern::ipc
