// The migration protocol's state machine: every failure at every phase leaves exactly one
// copy of the job that may run — never two, never none.
#include "tern/migrate/migration.hpp"

#include <gtest/gtest.h>

#include <algorithm>

namespace tern::migrate {
namespace {

using A = MigrationAction;
using E = MigrationEvent;

bool Has(const std::vector<A>& actions, A action) {
  return std::find(actions.begin(), actions.end(), action) != actions.end();
}

// Drives a machine to `phase` along the happy path.
SourceMigration At(MigrationPhase phase) {
  SourceMigration machine;
  const std::vector<std::pair<MigrationPhase, E>> path = {
      {MigrationPhase::kPreparing, E::kPreflightPassed},
      {MigrationPhase::kDumping, E::kDestinationReady},
      {MigrationPhase::kTransferring, E::kDumped},
      {MigrationPhase::kHandingOff, E::kRestored},
      {MigrationPhase::kCommitting, E::kHandedOff},
      {MigrationPhase::kDone, E::kCommitted}};
  for (const auto& [reached, event] : path) {
    if (machine.phase() == phase) break;
    machine.On(event);
    EXPECT_EQ(machine.phase(), reached);
  }
  return machine;
}

TEST(SourceMigrationTest, HappyPathActionsInOrder) {
  SourceMigration machine;
  EXPECT_EQ(machine.On(E::kPreflightPassed), std::vector<A>{A::kPrepareDestination});
  EXPECT_EQ(machine.runnable(), RunnableCopy::kSource);
  EXPECT_EQ(machine.On(E::kDestinationReady), std::vector<A>{A::kDump});
  EXPECT_EQ(machine.runnable(), RunnableCopy::kNone) << "frozen while it is dumped";
  EXPECT_EQ(machine.On(E::kDumped), std::vector<A>{A::kSendImages});
  EXPECT_EQ(machine.runnable(), RunnableCopy::kNone);
  EXPECT_EQ(machine.On(E::kRestored), std::vector<A>{A::kHandOff});
  EXPECT_EQ(machine.runnable(), RunnableCopy::kNone) << "neither runs while IPC state moves";
  EXPECT_EQ(machine.On(E::kHandedOff), (std::vector<A>{A::kKillSource, A::kSendCommit}));
  EXPECT_EQ(machine.runnable(), RunnableCopy::kDestination);
  EXPECT_EQ(machine.On(E::kCommitted), std::vector<A>{A::kReportSuccess});
  EXPECT_TRUE(machine.finished());
}

TEST(SourceMigrationTest, RefusedPreflightTouchesNothing) {
  SourceMigration machine;
  auto actions = machine.On(E::kPreflightRefused);
  EXPECT_EQ(actions, std::vector<A>{A::kReportFailure});
  EXPECT_EQ(machine.phase(), MigrationPhase::kRefused);
  EXPECT_EQ(machine.runnable(), RunnableCopy::kSource);
}

TEST(SourceMigrationTest, EveryFailureBeforeTheCommitPointResumesTheSource) {
  struct Case {
    MigrationPhase phase;
    E failure;
    bool frozen;
  };
  for (const Case& c : {Case{MigrationPhase::kPreparing, E::kDestinationFailed, false},
                        Case{MigrationPhase::kDumping, E::kDumpFailed, true},
                        Case{MigrationPhase::kDumping, E::kDestinationFailed, true},
                        Case{MigrationPhase::kTransferring, E::kDestinationFailed, true},
                        Case{MigrationPhase::kHandingOff, E::kHandOffFailed, true},
                        Case{MigrationPhase::kHandingOff, E::kDestinationFailed, true}}) {
    SCOPED_TRACE(std::string(ToString(c.phase)));
    SourceMigration machine = At(c.phase);
    auto actions = machine.On(c.failure);
    EXPECT_EQ(machine.phase(), MigrationPhase::kAborted);
    EXPECT_EQ(Has(actions, A::kResumeSource), c.frozen);
    EXPECT_TRUE(Has(actions, A::kAbortDestination));
    EXPECT_TRUE(Has(actions, A::kReportFailure));
    EXPECT_FALSE(Has(actions, A::kKillSource));
    EXPECT_EQ(machine.runnable(), RunnableCopy::kSource);
  }
}

TEST(SourceMigrationTest, PastTheCommitPointNothingResumesTheSource) {
  SourceMigration machine = At(MigrationPhase::kCommitting);
  for (E event : {E::kDestinationFailed, E::kCommitUnacknowledged, E::kDumpFailed}) {
    auto actions = machine.On(event);
    EXPECT_FALSE(Has(actions, A::kResumeSource));
    EXPECT_FALSE(Has(actions, A::kAbortDestination));
    EXPECT_EQ(machine.runnable(), RunnableCopy::kDestination);
  }
  EXPECT_EQ(machine.On(E::kCommitUnacknowledged), std::vector<A>{A::kSendCommit});
}

TEST(SourceMigrationTest, NeverTwoCopiesInAnyPhase) {
  // Exhaustively: from every reachable phase, every event; the kill of the source happens
  // exactly when the destination becomes the runnable copy, and resume only before it.
  for (MigrationPhase phase :
       {MigrationPhase::kPreflight, MigrationPhase::kPreparing, MigrationPhase::kDumping,
        MigrationPhase::kTransferring, MigrationPhase::kHandingOff, MigrationPhase::kCommitting,
        MigrationPhase::kDone}) {
    for (int e = 0; e <= static_cast<int>(E::kHandOffFailed); ++e) {
      SourceMigration machine = At(phase);
      const RunnableCopy before = machine.runnable();
      auto actions = machine.On(static_cast<E>(e));
      const RunnableCopy after = machine.runnable();
      if (Has(actions, A::kKillSource)) {
        EXPECT_EQ(after, RunnableCopy::kDestination);
      }
      if (Has(actions, A::kResumeSource)) {
        EXPECT_NE(before, RunnableCopy::kDestination);
        EXPECT_EQ(after, RunnableCopy::kSource);
      }
      if (before == RunnableCopy::kDestination) {
        EXPECT_EQ(after, RunnableCopy::kDestination) << "the source may never run again";
      }
    }
  }
}

TEST(SourceMigrationTest, UnexpectedEventsAreIgnored) {
  SourceMigration machine;
  EXPECT_TRUE(machine.On(E::kCommitted).empty());
  EXPECT_TRUE(machine.On(E::kRestored).empty());
  EXPECT_EQ(machine.phase(), MigrationPhase::kPreflight);
}

}  // namespace
}  // namespace tern::migrate
