// The source and destination machines driven as a pair (machine_pair_harness.hpp), with every
// fault at every phase: what a user relies on is that `tern migrate` ends with exactly one
// running copy of the job, or with a job that stays stopped and says why when the only node
// that knew the outcome is gone for good.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <iostream>
#include <map>
#include <set>

#include "machine_pair_harness.hpp"

namespace tern::migrate::testing {
namespace {

std::string Joined(const std::vector<std::string>& lines, std::size_t last = 60) {
  std::string text;
  const std::size_t from = lines.size() > last ? lines.size() - last : 0;
  for (std::size_t i = from; i < lines.size(); ++i) text += "  " + lines[i] + "\n";
  return text;
}

TEST(MachinePairTest, PreCopyMovesTheJob) {
  Scenario scenario;
  const Verdict verdict = RunScenario(scenario);
  ASSERT_TRUE(verdict.ok) << verdict.why << "\n" << Joined(verdict.log);
  EXPECT_EQ(verdict.outcome, "one copy, on the destination");
  EXPECT_EQ(verdict.source_phase, "done");
  EXPECT_EQ(verdict.destination_phase, "done");
}

TEST(MachinePairTest, PostCopyMovesTheJobAndItsPages) {
  Scenario scenario;
  scenario.mode = MoveMode::kPostCopy;
  const Verdict verdict = RunScenario(scenario);
  ASSERT_TRUE(verdict.ok) << verdict.why << "\n" << Joined(verdict.log);
  EXPECT_EQ(verdict.outcome, "one copy, on the destination");
  EXPECT_EQ(verdict.source_phase, "done");
  EXPECT_EQ(verdict.destination_phase, "done");
  EXPECT_TRUE(verdict.destination_phases_seen.count("pulling_pages"));
  EXPECT_TRUE(verdict.source_phases_seen.count("serving_pages"));
}

TEST(MachinePairTest, DryRunFreezesNothingAndLeavesTheJobWhereItIs) {
  Scenario scenario;
  scenario.dry_run = true;
  const Verdict verdict = RunScenario(scenario);
  ASSERT_TRUE(verdict.ok) << verdict.why;
  EXPECT_EQ(verdict.outcome, "one copy, on the source");
  EXPECT_EQ(verdict.source_phase, "dry_run_passed");
  EXPECT_EQ(verdict.destination_phase, "dry_run_passed");
  EXPECT_FALSE(verdict.source_phases_seen.count("dumping"));
}

TEST(MachinePairTest, ATransientPostCopyDumpFailureIsTriedAgainInTheMove) {
  Scenario scenario;
  scenario.mode = MoveMode::kPostCopy;
  scenario.first_dump_transient_failure = true;
  const Verdict verdict = RunScenario(scenario);
  ASSERT_TRUE(verdict.ok) << verdict.why << "\n" << Joined(verdict.log);
  EXPECT_EQ(verdict.outcome, "one copy, on the destination");
  EXPECT_TRUE(verdict.source_phases_seen.count("dump_retry_wait"));
}

// A pre-copy dump streams to D's page server, which serves one session: a held file lock ends
// the move (the job resumes at the source) with a retryable report, never a second dump
// against that server (the harness calls that a violation); the adapter's fresh move gets a
// fresh page server.
TEST(MachinePairTest, ATransientPreCopyDumpFailureEndsTheMoveForAFreshOne) {
  Scenario scenario;
  scenario.first_dump_transient_failure = true;
  const Verdict verdict = RunScenario(scenario);
  ASSERT_TRUE(verdict.ok) << verdict.why << "\n" << Joined(verdict.log);
  EXPECT_EQ(verdict.outcome, "one copy, on the source");
  EXPECT_TRUE(verdict.source_asked_for_a_fresh_move);
  EXPECT_FALSE(verdict.source_phases_seen.count("dump_retry_wait"));
  EXPECT_EQ(verdict.source_phase, "aborted");
  EXPECT_EQ(verdict.destination_phase, "aborted");
}

TEST(MachinePairTest, ACommitNobodyConfirmsIsDecidedByTheDestinationAsking) {
  Scenario scenario;
  scenario.built_in = {Fault::kCutLink, Side::kSource, static_cast<int>(SourcePhase::kCommitting),
                       120000};
  const Verdict verdict = RunScenario(scenario);
  ASSERT_TRUE(verdict.ok) << verdict.why << "\n" << Joined(verdict.log);
  EXPECT_EQ(verdict.outcome, "one copy, on the destination");
  EXPECT_EQ(verdict.source_phase, "commit_unacknowledged");
  EXPECT_TRUE(verdict.destination_phases_seen.count("fetching_ipc_state"));
}

TEST(MachinePairTest, ARestoredCopyWhoseSourceIsGoneStaysStoppedAndSaysWhy) {
  Scenario scenario;
  scenario.built_in = {Fault::kKillSourceForever, Side::kDestination,
                       static_cast<int>(DestinationPhase::kRestored)};
  scenario.seed = 2;  // killed after the restore was answered
  const Verdict verdict = RunScenario(scenario);
  ASSERT_TRUE(verdict.ok) << verdict.why << "\n" << Joined(verdict.log);
  EXPECT_TRUE(verdict.destination_phases_seen.count("blocked_source_silent"));
  EXPECT_EQ(verdict.outcome, "blocked (source silent), then recovered by the user");
}

TEST(MachinePairTest, APostCopyJobWhoseSourceDiesBeforeItsPagesIsBlocked) {
  Scenario scenario;
  scenario.mode = MoveMode::kPostCopy;
  scenario.built_in = {Fault::kKillSourceRestart, Side::kDestination,
                       static_cast<int>(DestinationPhase::kPullingPages)};
  const Verdict verdict = RunScenario(scenario);
  ASSERT_TRUE(verdict.ok) << verdict.why << "\n" << Joined(verdict.log);
  EXPECT_TRUE(verdict.destination_phases_seen.count("blocked_pages_lost"));
}

// Every fault at every phase of both machines, in both modes, on top of runs shaped to reach
// every phase (a dry run, a refusal, a transient dump failure, a pre-dump round, an abort during
// the restore, a commit nobody confirms, a source gone for good, pages lost).
// Seeds per combination: 2 (kill before and after acting); TERN_PAIR_SEEDS=N runs N.
std::vector<std::uint64_t> Seeds() {
  const char* text = std::getenv("TERN_PAIR_SEEDS");
  const int count = text ? std::max(2, std::atoi(text)) : 2;
  std::vector<std::uint64_t> seeds;
  for (int seed = 1; seed <= count; ++seed) seeds.push_back(static_cast<std::uint64_t>(seed));
  return seeds;
}

TEST(MachinePairTest, EveryFaultAtEveryPhaseLeavesOneCopyOrABlockedJobThatSaysWhy) {
  const std::vector<std::uint64_t> seeds = Seeds();
  std::vector<Scenario> bases;
  for (MoveMode mode : {MoveMode::kPreCopy, MoveMode::kPostCopy}) {
    Scenario base;
    base.mode = mode;
    bases.push_back(base);
    Scenario dry = base;
    dry.dry_run = true;
    bases.push_back(dry);
    Scenario transient = base;
    transient.first_dump_transient_failure = true;
    bases.push_back(transient);
    Scenario pre_dump = base;
    pre_dump.pre_dumps = 1;
    bases.push_back(pre_dump);
    Scenario refused = base;
    refused.destination_refuses = true;
    bases.push_back(refused);
    Scenario abort_in_restore = base;
    abort_in_restore.built_in = {Fault::kCutLink, Side::kDestination,
                                 static_cast<int>(DestinationPhase::kRestoring), 10000};
    bases.push_back(abort_in_restore);
    Scenario source_refuses = base;
    source_refuses.built_in = {Fault::kStepFails, Side::kSource,
                               static_cast<int>(SourcePhase::kPreflight)};
    bases.push_back(source_refuses);
    Scenario lost_in_dump = base;
    lost_in_dump.built_in = {Fault::kCutLink, Side::kSource,
                             static_cast<int>(SourcePhase::kDumping), 10000};
    bases.push_back(lost_in_dump);
    Scenario unconfirmed = base;
    unconfirmed.built_in = {Fault::kCutLink, Side::kSource,
                            static_cast<int>(SourcePhase::kCommitting), 120000};
    bases.push_back(unconfirmed);
    Scenario source_gone = base;
    source_gone.built_in = {Fault::kKillSourceForever, Side::kDestination,
                            static_cast<int>(DestinationPhase::kRestored)};
    bases.push_back(source_gone);
    if (mode == MoveMode::kPostCopy) {
      Scenario pages_lost = base;
      pages_lost.built_in = {Fault::kKillSourceRestart, Side::kDestination,
                             static_cast<int>(DestinationPhase::kPullingPages)};
      bases.push_back(pages_lost);
    }
  }

  // The phases each side reaches without an injected fault: where every fault must be tried.
  std::set<std::string> reachable;
  for (const Scenario& base : bases) {
    for (std::uint64_t seed : {1, 2}) {
      Scenario run = base;
      run.seed = seed;
      const Verdict verdict = RunScenario(run);
      ASSERT_TRUE(verdict.ok) << Describe(run) << ": " << verdict.why << "\n"
                              << Joined(verdict.log);
      for (const auto& phase : verdict.source_phases_seen) reachable.insert("S:" + phase);
      for (const auto& phase : verdict.destination_phases_seen) reachable.insert("D:" + phase);
    }
  }

  int runs = 0, failures = 0;
  std::set<std::string> fired;  // "fault@side:phase"
  std::map<std::string, int> outcomes;
  std::string first_failure;
  for (const Scenario& base : bases) {
    for (int f = 1; f < kFaultCount; ++f) {
      for (Side side : {Side::kSource, Side::kDestination}) {
        const int phases = side == Side::kSource ? kSourcePhaseCount : kDestinationPhaseCount;
        for (int phase = 0; phase < phases; ++phase) {
          for (std::uint64_t seed : seeds) {
            Scenario run = base;
            run.injected = {static_cast<Fault>(f), side, phase};
            run.seed = seed;
            const Verdict verdict = RunScenario(run);
            ++runs;
            if (verdict.injected_fired) {
              fired.insert(ToString(run.injected.fault) + "@" +
                           (side == Side::kSource ? "S:" : "D:") +
                           (side == Side::kSource
                                ? std::string(ToString(static_cast<SourcePhase>(phase)))
                                : std::string(ToString(static_cast<DestinationPhase>(phase)))));
            }
            ++outcomes[verdict.ok ? verdict.outcome : "FAILED"];
            if (!verdict.ok) {
              ++failures;
              if (first_failure.empty()) {
                first_failure = Describe(run) + ": " + verdict.why + "\n" + Joined(verdict.log);
              }
              ADD_FAILURE() << Describe(run) << ": " << verdict.why;
              if (failures > 20) FAIL() << "too many failures; the first:\n" << first_failure;
            }
          }
        }
      }
    }
  }

  // Kills and cuts fire whenever their phase is reached: each must have hit every phase.
  std::vector<std::string> missed;
  for (const std::string& phase : reachable) {
    for (Fault fault :
         {Fault::kKillSourceRestart, Fault::kKillSourceForever, Fault::kKillDestinationRestart,
          Fault::kKillDestinationForever, Fault::kCutLink}) {
      if (!fired.count(ToString(fault) + "@" + phase))
        missed.push_back(ToString(fault) + "@" + phase);
    }
  }
  const int combinations = (kFaultCount - 1) * static_cast<int>(reachable.size());
  std::cout << "machine pair campaign: " << runs << " runs, " << fired.size() << " of "
            << combinations << " (fault, phase) combinations fired over " << reachable.size()
            << " reachable phases (" << kSourcePhaseCount << " source + " << kDestinationPhaseCount
            << " destination phases), " << failures << " failed\n";
  for (const auto& [outcome, count] : outcomes) {
    std::cout << "  " << count << " x " << outcome << "\n";
  }
  std::string not_fired;
  for (const std::string& phase : reachable) {
    for (int f = 1; f < kFaultCount; ++f) {
      const std::string key = ToString(static_cast<Fault>(f)) + "@" + phase;
      if (!fired.count(key)) not_fired += " " + key;
    }
  }
  std::cout << "  never fired (no message or step follows that phase):" << not_fired << "\n";
  EXPECT_TRUE(missed.empty()) << "kills or cuts that never hit their phase: " << missed.size();
  EXPECT_EQ(failures, 0) << "the first:\n" << first_failure;
  EXPECT_EQ(reachable.size(), static_cast<std::size_t>(kSourcePhaseCount + kDestinationPhaseCount))
      << "some phase was never reached";
}

}  // namespace
}  // namespace tern::migrate::testing
