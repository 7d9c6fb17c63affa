#include "tern/ipc/node/timer_schedule.hpp"

namespace tern::ipc {

void TimerSchedule::Add(std::uint64_t id, Clock::time_point deadline) {
  Cancel(id);
  by_id_[id] = by_deadline_.emplace(deadline, id);
}

void TimerSchedule::Cancel(std::uint64_t id) {
  auto it = by_id_.find(id);
  if (it == by_id_.end()) return;
  by_deadline_.erase(it->second);
  by_id_.erase(it);
}

std::vector<std::uint64_t> TimerSchedule::TakeDue(Clock::time_point now) {
  std::vector<std::uint64_t> due;
  while (!by_deadline_.empty() && by_deadline_.begin()->first <= now) {
    const std::uint64_t id = by_deadline_.begin()->second;
    by_deadline_.erase(by_deadline_.begin());
    by_id_.erase(id);
    due.push_back(id);
  }
  return due;
}

std::optional<TimerSchedule::Clock::time_point> TimerSchedule::next_deadline() const {
  if (by_deadline_.empty()) return std::nullopt;
  return by_deadline_.begin()->first;
}

bool TimerSchedule::arm_needed() const {
  auto next = next_deadline();
  if (!next) return false;
  return !armed_ || *next < *armed_;
}

}  // namespace tern::ipc
