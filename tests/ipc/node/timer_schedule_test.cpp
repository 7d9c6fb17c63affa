// TimerSchedule: due order, cancellation, and when the one real timer must be re-armed.
#include <gtest/gtest.h>

#include <tern/ipc/node/timer_schedule.hpp>

namespace tern::ipc {
namespace {

using namespace std::chrono_literals;
using Clock = TimerSchedule::Clock;

TEST(TimerSchedule, DueTimersComeOutEarliestFirstAndCancelledOnesNever) {
  TimerSchedule schedule;
  const auto t0 = Clock::now();
  schedule.Add(1, t0 + 30ms);
  schedule.Add(2, t0 + 10ms);
  schedule.Add(3, t0 + 20ms);
  schedule.Cancel(3);
  schedule.Cancel(99);  // unknown: ignored
  EXPECT_TRUE(schedule.TakeDue(t0 + 5ms).empty());
  EXPECT_EQ(schedule.TakeDue(t0 + 30ms), (std::vector<std::uint64_t>{2, 1}));
  EXPECT_EQ(schedule.size(), 0u);
  EXPECT_FALSE(schedule.next_deadline());
}

TEST(TimerSchedule, TheRealTimerIsReArmedOnlyForAnEarlierDeadline) {
  TimerSchedule schedule;
  const auto t0 = Clock::now();
  EXPECT_FALSE(schedule.arm_needed()) << "nothing to wait for";
  schedule.Add(1, t0 + 100ms);
  ASSERT_TRUE(schedule.arm_needed());
  schedule.Armed(schedule.next_deadline());
  // A receive's timer cancelled and the next one set later: the armed timer stays.
  schedule.Cancel(1);
  schedule.Add(2, t0 + 200ms);
  EXPECT_FALSE(schedule.arm_needed());
  // An earlier deadline needs the timer moved.
  schedule.Add(3, t0 + 50ms);
  EXPECT_TRUE(schedule.arm_needed());
  schedule.Armed(schedule.next_deadline());
  EXPECT_EQ(*schedule.next_deadline(), t0 + 50ms);
  // The timer fired: nothing armed until the caller arms it again.
  EXPECT_EQ(schedule.TakeDue(t0 + 60ms), (std::vector<std::uint64_t>{3}));
  schedule.Armed(std::nullopt);
  EXPECT_TRUE(schedule.arm_needed());
  EXPECT_EQ(*schedule.next_deadline(), t0 + 200ms);
}

}  // namespace
}  // namespace tern::ipc
