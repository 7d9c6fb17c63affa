#include "fault_hook.hpp"

#include <algorithm>
#include <set>
#include <tern/migrate/request_names.hpp>

namespace tern::agent {
namespace {

constexpr long kMaxLastsMs = 60000;
constexpr long kMinRateKbit = 8;
constexpr long kMaxRateKbit = 10'000'000;

Expected<MoveSide> SideFrom(std::string_view text) {
  if (text == "source") return MoveSide::kSource;
  if (text == "destination") return MoveSide::kDestination;
  return Fail("side must be \"source\" or \"destination\", not \"" + std::string(text) + "\"");
}

Expected<FaultAction> ActionFrom(std::string_view text) {
  if (text == "kill") return FaultAction::kKillAgent;
  if (text == "cut") return FaultAction::kCutLinks;
  if (text == "degrade") return FaultAction::kDegradeLinks;
  if (text == "lose") return FaultAction::kLoseMessages;
  return Fail("action must be \"kill\", \"cut\", \"degrade\" or \"lose\", not \"" +
              std::string(text) + "\"");
}

}  // namespace

std::string_view ToString(FaultAction action) {
  switch (action) {
    case FaultAction::kKillAgent:
      return "kill";
    case FaultAction::kCutLinks:
      return "cut";
    case FaultAction::kDegradeLinks:
      return "degrade";
    case FaultAction::kLoseMessages:
      return "lose";
  }
  return "unknown";
}

std::string_view ToString(MoveSide side) {
  return side == MoveSide::kSource ? "source" : "destination";
}

Expected<FaultPlan> FaultPlan::FromJson(const nlohmann::json& body) {
  if (!body.is_object()) return Fail("a fault is a JSON object");
  static const std::set<std::string> kFields = {
      "side", "phase", "action", "cut_ms", "for_ms", "loss_pct", "rate_kbit", "job", "message"};
  static const std::set<std::string> kNumbers = {"cut_ms", "for_ms", "loss_pct", "rate_kbit"};
  for (const auto& [key, value] : body.items()) {
    if (!kFields.contains(key)) return Fail("unknown field \"" + key + "\" in the fault");
    if (kNumbers.contains(key) ? !value.is_number_integer() : !value.is_string()) {
      return Fail("field \"" + key + "\" has the wrong type");
    }
  }
  for (const char* required : {"side", "phase", "action"}) {
    if (!body.contains(required)) return Fail(std::string("the fault needs \"") + required + "\"");
  }
  FaultPlan plan;
  auto side = SideFrom(body["side"].get<std::string>());
  if (!side) return Unexpected<Error>{side.error()};
  plan.side = *side;
  auto action = ActionFrom(body["action"].get<std::string>());
  if (!action) return Unexpected<Error>{action.error()};
  plan.action = *action;
  plan.phase = body["phase"].get<std::string>();
  if (plan.phase.empty() || plan.phase.size() > 64) return Fail("the fault's phase is empty");
  plan.job = body.value("job", "");
  if (plan.action == FaultAction::kCutLinks) {
    const long cut_ms = body.value("cut_ms", 0L);
    if (cut_ms < 1 || cut_ms > kMaxLastsMs) {
      return Fail("a cut needs cut_ms between 1 and " + std::to_string(kMaxLastsMs));
    }
    plan.lasts_for = std::chrono::milliseconds(cut_ms);
  } else if (body.contains("cut_ms")) {
    return Fail("cut_ms is for action \"cut\" only");
  }
  if (plan.action == FaultAction::kDegradeLinks || plan.action == FaultAction::kLoseMessages) {
    const long for_ms = body.value("for_ms", 0L);
    if (for_ms < 1 || for_ms > kMaxLastsMs) {
      return Fail("a " + std::string(ToString(plan.action)) + " needs for_ms between 1 and " +
                  std::to_string(kMaxLastsMs));
    }
    plan.lasts_for = std::chrono::milliseconds(for_ms);
  } else if (body.contains("for_ms")) {
    return Fail("for_ms is for actions \"degrade\" and \"lose\" only");
  }
  if (plan.action == FaultAction::kDegradeLinks) {
    const long loss = body.value("loss_pct", 0L);
    const long rate = body.value("rate_kbit", 0L);
    if (loss < 0 || loss > 100) return Fail("loss_pct must be 0 to 100");
    if (rate != 0 && (rate < kMinRateKbit || rate > kMaxRateKbit)) {
      return Fail("rate_kbit must be 0 (uncapped) or " + std::to_string(kMinRateKbit) + " to " +
                  std::to_string(kMaxRateKbit));
    }
    if (loss == 0 && rate == 0) return Fail("a degrade needs loss_pct or rate_kbit");
    plan.loss_pct = static_cast<int>(loss);
    plan.rate_kbit = static_cast<int>(rate);
  } else {
    for (const char* field : {"loss_pct", "rate_kbit"}) {
      if (body.contains(field)) {
        return Fail(std::string(field) + " is for action \"degrade\" only");
      }
    }
  }
  if (plan.action == FaultAction::kLoseMessages) {
    plan.message = body.value("message", "");
    const auto names = migrate::RequestNames();
    if (std::find(names.begin(), names.end(), plan.message) == names.end()) {
      std::string known;
      for (std::string_view name : names) known += (known.empty() ? "" : ", ") + std::string(name);
      return Fail("a lose needs message: one of " + known);
    }
  } else if (body.contains("message")) {
    return Fail("message is for action \"lose\" only");
  }
  return plan;
}

nlohmann::json FaultPlan::ToJson() const {
  nlohmann::json out = {{"side", ToString(side)}, {"phase", phase}, {"action", ToString(action)}};
  if (action == FaultAction::kCutLinks) out["cut_ms"] = lasts_for.count();
  if (action == FaultAction::kDegradeLinks) {
    out["for_ms"] = lasts_for.count();
    if (loss_pct != 0) out["loss_pct"] = loss_pct;
    if (rate_kbit != 0) out["rate_kbit"] = rate_kbit;
  }
  if (action == FaultAction::kLoseMessages) {
    out["for_ms"] = lasts_for.count();
    out["message"] = message;
  }
  if (!job.empty()) out["job"] = job;
  return out;
}

nlohmann::json FaultHit::ToJson() const {
  nlohmann::json out = plan.ToJson();
  out["hit_job"] = job;
  out["migration"] = migration;
  return out;
}

Expected<std::vector<FaultPlan>> FaultPlan::ListFromJson(const nlohmann::json& body) {
  if (!body.is_array()) {
    auto plan = FromJson(body);
    if (!plan) return Unexpected<Error>{plan.error()};
    return std::vector<FaultPlan>{std::move(*plan)};
  }
  if (body.empty() || body.size() > FaultHook::kMaxArmed) {
    return Fail("an array of 1 to " + std::to_string(FaultHook::kMaxArmed) + " faults");
  }
  std::vector<FaultPlan> plans;
  for (const auto& item : body) {
    auto plan = FromJson(item);
    if (!plan) return Unexpected<Error>{plan.error()};
    plans.push_back(std::move(*plan));
  }
  return plans;
}

Expected<void> FaultHook::Arm(std::vector<FaultPlan> plans) {
  if (!enabled_) {
    return Fail("fault injection is off on this node ([testing] faults = true turns it on)");
  }
  if (plans.size() > kMaxArmed) {
    return Fail("at most " + std::to_string(kMaxArmed) + " faults may be armed at once");
  }
  armed_ = std::move(plans);
  Changed();
  return {};
}

void FaultHook::Disarm() {
  armed_.clear();
  Changed();
}

void FaultHook::Restore(std::vector<FaultPlan> plans) {
  if (!enabled_) return;
  if (plans.size() > kMaxArmed) plans.resize(kMaxArmed);
  armed_ = std::move(plans);
}

std::optional<FaultHit> FaultHook::OnPhase(MoveSide side, std::string_view phase,
                                           std::string_view job, std::string_view migration) {
  if (!enabled_) return std::nullopt;
  auto match = std::find_if(armed_.begin(), armed_.end(), [&](const FaultPlan& plan) {
    return plan.side == side && plan.phase == phase && (plan.job.empty() || plan.job == job);
  });
  if (match == armed_.end()) return std::nullopt;
  FaultHit hit{std::move(*match), std::string(job), std::string(migration)};
  armed_.erase(match);
  last_hit_ = hit;
  Changed();
  return hit;
}

void FaultHook::StartLosing(const FaultPlan& plan, std::chrono::steady_clock::time_point now) {
  if (plan.action != FaultAction::kLoseMessages) return;
  std::erase_if(losing_, [&](const auto& entry) { return entry.first == plan.message; });
  losing_.emplace_back(plan.message, now + plan.lasts_for);
}

bool FaultHook::Loses(std::string_view message, std::chrono::steady_clock::time_point now) const {
  return std::any_of(losing_.begin(), losing_.end(), [&](const auto& entry) {
    return entry.first == message && now < entry.second;
  });
}

nlohmann::json FaultHook::StatusJson() const {
  nlohmann::json armed = nlohmann::json::array();
  for (const auto& plan : armed_) armed.push_back(plan.ToJson());
  return {{"enabled", enabled_},
          {"armed", std::move(armed)},
          {"last_hit", last_hit_ ? last_hit_->ToJson() : nlohmann::json(nullptr)}};
}

}  // namespace tern::agent
