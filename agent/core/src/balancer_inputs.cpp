#include "balancer_inputs.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>

namespace tern::agent {

balancer::NodeState ToNodeState(const NodeView& node) {
  // How old the load figures are (gossip entry age), else the last sign of life.
  const std::chrono::milliseconds age(
      std::max<std::int64_t>(0, node.load ? node.age_ms : node.last_seen_ms));
  balancer::NodeState state;
  if (node.load) state = balancer::NodeStateFromLoad(*node.load, age);
  state.id = node.id;
  state.name = node.name;
  state.self = node.self;
  state.alive = node.state == "alive" && node.load.has_value();
  state.age = age;
  return state;
}

void MigrationCostEstimator::OnMoved(const nlohmann::json& stats) {
  if (!stats.is_object()) return;
  auto number = [](const nlohmann::json& object, const char* key) {
    return object.contains(key) && object[key].is_number() ? object[key].get<double>() : -1.0;
  };
  const double freeze_ms = number(stats, "freeze_ms");
  const double bytes = number(stats, "bytes");
  if (!(freeze_ms >= 0) || !(bytes >= 0) || !std::isfinite(freeze_ms) || !std::isfinite(bytes)) {
    return;
  }
  // Running means: every past move counts the same, so one odd move does not swing it.
  ++costs_.samples;
  const double freeze_s = freeze_ms / 1000;
  costs_.freeze_s = costs_.samples == 1
                        ? freeze_s
                        : costs_.freeze_s + (freeze_s - costs_.freeze_s) / costs_.samples;
  if (bytes < static_cast<double>(kMinRateBytes)) return;
  // The time the bytes took: the dump and the transfer (with the restore it overlaps);
  // preflight and prepare are fixed costs, not a rate.
  double moving_ms = -1;
  if (stats.contains("phases_ms") && stats["phases_ms"].is_object()) {
    const double dump = number(stats["phases_ms"], "dump");
    const double transfer = number(stats["phases_ms"], "transfer_and_restore");
    if (dump >= 0 && transfer >= 0) moving_ms = dump + transfer;
  }
  if (!(moving_ms > 0)) moving_ms = number(stats, "total_ms");
  if (!(moving_ms > 0) || !std::isfinite(moving_ms)) return;
  const double rate = bytes / (moving_ms / 1000);
  ++rate_samples_;
  costs_.bytes_per_s =
      rate_samples_ == 1 ? rate : costs_.bytes_per_s + (rate - costs_.bytes_per_s) / rate_samples_;
}

double CpuShareMeter::Update(const std::string& job, double cpu_seconds, Millis now) {
  auto [entry, fresh] = samples_.try_emplace(job, Sample{cpu_seconds, now, 0});
  Sample& sample = entry->second;
  if (fresh) return 0;
  const double elapsed_s = std::chrono::duration<double>(now - sample.at).count();
  // Samples closer than a second apart say little: keep the last share until one does.
  if (elapsed_s < 1.0) return sample.share;
  const double used = cpu_seconds - sample.cpu_seconds;
  sample.share = used > 0 ? used / elapsed_s : 0;
  sample.cpu_seconds = cpu_seconds;
  sample.at = now;
  return sample.share;
}

void CpuShareMeter::KeepOnly(const std::set<std::string>& jobs) {
  std::erase_if(samples_, [&](const auto& entry) { return jobs.count(entry.first) == 0; });
}

std::string SkipNotes::Words(const std::string& reason) {
  std::string out;
  for (std::size_t i = 0; i < reason.size();) {
    if (std::isdigit(static_cast<unsigned char>(reason[i]))) {
      while (i < reason.size() && (std::isdigit(static_cast<unsigned char>(reason[i])) ||
                                   (reason[i] == '.' && i + 1 < reason.size() &&
                                    std::isdigit(static_cast<unsigned char>(reason[i + 1]))))) {
        ++i;
      }
      out += '#';
    } else {
      out += reason[i++];
    }
  }
  return out;
}

bool SkipNotes::ShouldTell(const std::string& job, const std::string& reason, Millis now) {
  auto found = told_.find(job);
  if (found != told_.end()) {
    if (found->second.reason == reason) return false;
    if (Words(found->second.reason) == Words(reason) && now - found->second.at < repeat_after_) {
      return false;
    }
  }
  told_[job] = {reason, now};
  return true;
}

void SkipNotes::KeepOnly(const std::set<std::string>& jobs) {
  std::erase_if(told_, [&](const auto& entry) { return jobs.count(entry.first) == 0; });
}

nlohmann::json MigrateEvent(const balancer::MigrateDecision& decision) {
  return {{"action", "migrate"},
          {"job", decision.job},
          {"to", decision.to_name},
          {"kind", decision.kind},
          {"mode", decision.postcopy ? "postcopy" : "precopy"},
          {"reason", decision.reason}};
}

}  // namespace tern::agent
