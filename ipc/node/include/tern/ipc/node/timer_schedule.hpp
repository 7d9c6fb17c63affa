// TimerSchedule: the router's timers (PortRouter::TimerAction) kept in one sorted set, so that
// the agent needs one Asio timer for all of them. A receive with a timeout sets a timer that is
// nearly always cancelled a few microseconds later (a message came); one kernel timer per
// router timer cost a timerfd_settime on each receive and, without cancellation, a wake-up at
// every abandoned deadline.
//
// Logic only: the caller arms a real timer at next_deadline() when arm_needed() says the
// earliest deadline moved earlier than what is armed, and calls TakeDue() when it fires.
//
// Thread-safety: none; used from the agent's io thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <unordered_map>
#include <vector>

namespace tern::ipc {

class TimerSchedule {
 public:
  using Clock = std::chrono::steady_clock;

  void Add(std::uint64_t id, Clock::time_point deadline);
  void Cancel(std::uint64_t id);  // unknown ids are ignored

  // The ids whose deadline is at or before `now`, earliest first; they leave the schedule.
  std::vector<std::uint64_t> TakeDue(Clock::time_point now);

  std::optional<Clock::time_point> next_deadline() const;
  // Whether the real timer must be (re)armed: nothing is armed, or the earliest deadline is
  // before the armed one. A timer armed later than needed is never re-armed: when it fires
  // with nothing due, the caller arms it again at next_deadline().
  bool arm_needed() const;
  void Armed(std::optional<Clock::time_point> at) { armed_ = at; }

  std::size_t size() const { return by_id_.size(); }

 private:
  std::multimap<Clock::time_point, std::uint64_t> by_deadline_;
  std::unordered_map<std::uint64_t, std::multimap<Clock::time_point, std::uint64_t>::iterator>
      by_id_;
  std::optional<Clock::time_point> armed_;
};

}  // namespace tern::ipc
