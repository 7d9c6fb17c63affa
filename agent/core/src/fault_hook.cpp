#include "fault_hook.hpp"

#include <set>

namespace tern::agent {
namespace {

constexpr long kMaxCutMs = 60000;

Expected<MoveSide> SideFrom(std::string_view text) {
  if (text == "source") return MoveSide::kSource;
  if (text == "destination") return MoveSide::kDestination;
  return Fail("side must be \"source\" or \"destination\", not \"" + std::string(text) + "\"");
}

Expected<FaultAction> ActionFrom(std::string_view text) {
  if (text == "kill") return FaultAction::kKillAgent;
  if (text == "cut") return FaultAction::kCutLinks;
  return Fail("action must be \"kill\" or \"cut\", not \"" + std::string(text) + "\"");
}

}  // namespace

std::string_view ToString(FaultAction action) {
  return action == FaultAction::kKillAgent ? "kill" : "cut";
}

std::string_view ToString(MoveSide side) {
  return side == MoveSide::kSource ? "source" : "destination";
}

Expected<FaultPlan> FaultPlan::FromJson(const nlohmann::json& body) {
  if (!body.is_object()) return Fail("a fault is a JSON object");
  static const std::set<std::string> kFields = {"side", "phase", "action", "cut_ms", "job"};
  for (const auto& [key, value] : body.items()) {
    if (!kFields.contains(key)) return Fail("unknown field \"" + key + "\" in the fault");
    if (key == "cut_ms" ? !value.is_number_integer() : !value.is_string()) {
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
    if (cut_ms < 1 || cut_ms > kMaxCutMs) {
      return Fail("a cut needs cut_ms between 1 and " + std::to_string(kMaxCutMs));
    }
    plan.cut_for = std::chrono::milliseconds(cut_ms);
  } else if (body.contains("cut_ms")) {
    return Fail("cut_ms is for action \"cut\" only");
  }
  return plan;
}

nlohmann::json FaultPlan::ToJson() const {
  nlohmann::json out = {{"side", ToString(side)}, {"phase", phase}, {"action", ToString(action)}};
  if (action == FaultAction::kCutLinks) out["cut_ms"] = cut_for.count();
  if (!job.empty()) out["job"] = job;
  return out;
}

nlohmann::json FaultHit::ToJson() const {
  nlohmann::json out = plan.ToJson();
  out["hit_job"] = job;
  out["migration"] = migration;
  return out;
}

Expected<void> FaultHook::Arm(FaultPlan plan) {
  if (!enabled_) {
    return Fail("fault injection is off on this node ([testing] faults = true turns it on)");
  }
  armed_ = std::move(plan);
  return {};
}

std::optional<FaultHit> FaultHook::OnPhase(MoveSide side, std::string_view phase,
                                           std::string_view job, std::string_view migration) {
  if (!enabled_ || !armed_ || armed_->side != side || armed_->phase != phase) return std::nullopt;
  if (!armed_->job.empty() && armed_->job != job) return std::nullopt;
  FaultHit hit{std::move(*armed_), std::string(job), std::string(migration)};
  armed_.reset();
  last_hit_ = hit;
  return hit;
}

nlohmann::json FaultHook::StatusJson() const {
  return {{"enabled", enabled_},
          {"armed", armed_ ? armed_->ToJson() : nlohmann::json(nullptr)},
          {"last_hit", last_hit_ ? last_hit_->ToJson() : nlohmann::json(nullptr)}};
}

}  // namespace tern::agent
