// SampleSchedule: idle jobs are read less often, busy ones every second, and CPU the node's
// cgroup shows but the sampled jobs do not explain wakes every job. Explicit times, no sleeping.
#include "sample_schedule.hpp"

#include <gtest/gtest.h>

#include <map>

namespace tern::agent {
namespace {

using namespace std::chrono_literals;
using Clock = SampleSchedule::Clock;

// Samples `job` whenever it is due from t0 for `span`, every `tick`, reporting `share` and
// `runnable`; returns the times it was sampled (offsets from t0).
std::vector<Clock::duration> SampleWhenDue(SampleSchedule& schedule, const std::string& job,
                                           Clock::time_point t0, Clock::duration span, double share,
                                           int runnable, Clock::duration tick = 1s) {
  std::vector<Clock::duration> at;
  for (auto now = t0; now < t0 + span; now += tick) {
    if (!schedule.Due(job, now)) continue;
    schedule.OnSampled(job, share, runnable, now);
    at.push_back(now - t0);
  }
  return at;
}

TEST(SampleSchedule, AJobNeverSeenIsDue) {
  SampleSchedule schedule;
  EXPECT_TRUE(schedule.Due("n1.1", Clock::now()));
  EXPECT_EQ(schedule.Interval("n1.1"), 1s);
}

TEST(SampleSchedule, ABusyJobIsSampledEverySecond) {
  SampleSchedule schedule;
  const auto t0 = Clock::now();
  const auto at = SampleWhenDue(schedule, "busy", t0, 30s, /*share=*/0.5, /*runnable=*/1);
  EXPECT_EQ(at.size(), 30u);
  EXPECT_EQ(schedule.Interval("busy"), 1s);
}

TEST(SampleSchedule, ARunnableJobThatGotNoCpuIsBusy) {
  // A job starved by its node's quota gets ~0 CPU but wants it: it must stay watched.
  SampleSchedule schedule;
  const auto at = SampleWhenDue(schedule, "starved", Clock::now(), 20s, 0.0, 1);
  EXPECT_EQ(at.size(), 20u);
}

TEST(SampleSchedule, AnIdleJobBacksOffByDoublingUpToTheMaximum) {
  SampleSchedule schedule;  // base 1 s, 3 idle samples, max 8 s
  const auto t0 = Clock::now();
  const auto at = SampleWhenDue(schedule, "sleep", t0, 60s, 0.0, 0);
  // 3 idle samples at 1 s, then 2, 4, 8, 8, ...
  const std::vector<Clock::duration> expected = {0s,  1s,  2s,  3s,  5s,  9s,
                                                 17s, 25s, 33s, 41s, 49s, 57s};
  EXPECT_EQ(at, expected);
  EXPECT_EQ(schedule.Interval("sleep"), 8s);
}

TEST(SampleSchedule, OneBusySampleBringsTheJobBackToEverySecond) {
  SampleSchedule schedule;
  const auto t0 = Clock::now();
  SampleWhenDue(schedule, "job", t0, 40s, 0.0, 0);
  ASSERT_EQ(schedule.Interval("job"), 8s);
  const auto t1 = t0 + 41s;
  ASSERT_TRUE(schedule.Due("job", t1));
  schedule.OnSampled("job", 0.3, 0, t1);
  EXPECT_EQ(schedule.Interval("job"), 1s);
  EXPECT_FALSE(schedule.Due("job", t1 + 500ms));
  EXPECT_TRUE(schedule.Due("job", t1 + 1s));
  // And it needs the full idle streak again before it backs off.
  schedule.OnSampled("job", 0.0, 0, t1 + 1s);
  schedule.OnSampled("job", 0.0, 0, t1 + 2s);
  schedule.OnSampled("job", 0.0, 0, t1 + 3s);
  EXPECT_EQ(schedule.Interval("job"), 1s);
  schedule.OnSampled("job", 0.0, 0, t1 + 4s);
  EXPECT_EQ(schedule.Interval("job"), 2s);
}

TEST(SampleSchedule, ATinyShareIsIdleAndTheThresholdIsAnOption) {
  SampleSchedule schedule;
  SampleWhenDue(schedule, "quiet", Clock::now(), 30s, 0.001, 0);
  EXPECT_EQ(schedule.Interval("quiet"), 8s) << "0.1% of a CPU is below the default 0.5%";
  SampleSchedule strict({.idle_cpu_share = 0.0001});
  SampleWhenDue(strict, "quiet", Clock::now(), 30s, 0.001, 0);
  EXPECT_EQ(strict.Interval("quiet"), 1s);
}

TEST(SampleSchedule, WakeMakesJobsDueWithoutShorteningTheirInterval) {
  SampleSchedule schedule;
  const auto t0 = Clock::now();
  SampleWhenDue(schedule, "a", t0, 40s, 0.0, 0);
  SampleWhenDue(schedule, "b", t0, 40s, 0.0, 0);
  const auto now = t0 + 40s;
  ASSERT_FALSE(schedule.Due("a", now));
  ASSERT_FALSE(schedule.Due("b", now));
  schedule.Wake("a", now);
  EXPECT_TRUE(schedule.Due("a", now));
  EXPECT_FALSE(schedule.Due("b", now));
  schedule.WakeAll(now);
  EXPECT_TRUE(schedule.Due("b", now));
  // Still idle when sampled: the interval stays at its maximum.
  schedule.OnSampled("b", 0.0, 0, now);
  EXPECT_EQ(schedule.Interval("b"), 8s);
  EXPECT_FALSE(schedule.Due("b", now + 7s));
}

TEST(SampleSchedule, CgroupCpuTheSampledJobsExplainWakesNobody) {
  SampleSchedule schedule;
  const auto t0 = Clock::now();
  SampleWhenDue(schedule, "idle", t0, 42s, 0.0, 0);
  const auto now = t0 + 42s;
  EXPECT_FALSE(schedule.OnNodeCpu(100.0, 0, now)) << "a first reading says nothing";
  // One second later the cgroup used 0.5 CPU-s, all of it by the jobs sampled meanwhile.
  EXPECT_FALSE(schedule.OnNodeCpu(100.5, 0.5, now + 1s));
  // 0.01 CPU-s unexplained is below the default 0.02 CPU.
  EXPECT_FALSE(schedule.OnNodeCpu(100.51, 0.0, now + 2s));
  EXPECT_FALSE(schedule.Due("idle", now + 2s));
}

TEST(SampleSchedule, CgroupCpuNobodyExplainsWakesEveryJob) {
  SampleSchedule schedule;
  const auto t0 = Clock::now();
  SampleWhenDue(schedule, "a", t0, 42s, 0.0, 0);
  SampleWhenDue(schedule, "b", t0, 42s, 0.0, 0);
  const auto now = t0 + 42s;
  schedule.OnNodeCpu(100.0, 0, now);
  ASSERT_FALSE(schedule.Due("a", now + 1s));
  // 0.3 CPU-s used in the cgroup, 0.1 of it by the jobs sampled: a seldom-read job works.
  EXPECT_TRUE(schedule.OnNodeCpu(100.3, 0.1, now + 1s));
  EXPECT_TRUE(schedule.Due("a", now + 1s));
  EXPECT_TRUE(schedule.Due("b", now + 1s));
}

TEST(SampleSchedule, ACgroupCounterThatWentBackSaysNothing) {
  SampleSchedule schedule;
  const auto t0 = Clock::now();
  SampleWhenDue(schedule, "a", t0, 42s, 0.0, 0);
  const auto now = t0 + 42s;
  schedule.OnNodeCpu(100.0, 0, now);
  EXPECT_FALSE(schedule.OnNodeCpu(5.0, 0, now + 1s)) << "a recreated cgroup";
  EXPECT_FALSE(schedule.OnNodeCpu(5.0, 0, now + 1s)) << "a clock that did not move";
  EXPECT_FALSE(schedule.Due("a", now + 1s));
}

TEST(SampleSchedule, ForgottenJobsAreDueAsNewOnes) {
  SampleSchedule schedule;
  const auto t0 = Clock::now();
  SampleWhenDue(schedule, "gone", t0, 40s, 0.0, 0);
  SampleWhenDue(schedule, "kept", t0, 40s, 0.0, 0);
  schedule.KeepOnly([](const std::string& job) { return job == "kept"; });
  EXPECT_TRUE(schedule.Due("gone", t0 + 40s));
  EXPECT_EQ(schedule.Interval("gone"), 1s);
  EXPECT_EQ(schedule.Interval("kept"), 8s);
}

}  // namespace
}  // namespace tern::agent
