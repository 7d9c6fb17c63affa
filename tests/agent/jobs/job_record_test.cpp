#include <gtest/gtest.h>

#include <filesystem>

#include "tern/jobs/job_store.hpp"

namespace tern::jobs {
namespace {

TEST(JobRecordTest, PublicJsonHasTheDocumentedFields) {
  JobRecord job;
  job.id = "node1.3";
  job.name = "sleep";
  job.state = JobState::kExited;
  job.exit_code = 0;
  job.submitted_at = ParseTime("2026-11-24T12:00:00Z").value();
  job.started_at = job.submitted_at;
  job.ended_at = ParseTime("2026-11-24T12:00:05Z");
  auto json = ToJson(job, *job.ended_at);
  for (const char* field : {"id",          "name",        "user",         "uid",        "gid",
                            "node",        "home_node",   "state",        "argv",       "pid",
                            "exit_code",   "signal",      "submitted_at", "started_at", "ended_at",
                            "age_seconds", "cpu_seconds", "rss_bytes",    "dir",        "error"}) {
    EXPECT_TRUE(json.contains(field)) << field;
  }
  EXPECT_EQ(json["state"], "exited");
  EXPECT_EQ(json["ended_at"], "2026-11-24T12:00:05Z");
  EXPECT_TRUE(json["signal"].is_null());
  EXPECT_FALSE(json.contains("env"));  // internal fields stay internal
}

TEST(JobRecordTest, PersistentFormRoundTrips) {
  JobRecord job;
  job.id = "n.1";
  job.uid = 1000;
  job.state = JobState::kRunning;
  job.pid = 42;
  job.pid_start_ticks = 777;
  job.env = {{"A", "b"}};
  job.argv = {"x", "y z"};
  auto back = FromPersistentJson(PersistentJson(job));
  ASSERT_TRUE(back) << back.error().message;
  EXPECT_EQ(back->pid_start_ticks, 777u);
  EXPECT_EQ(back->env.at("A"), "b");
  EXPECT_EQ(back->argv, job.argv);
  EXPECT_EQ(back->uid, 1000u);
  EXPECT_FALSE(
      FromPersistentJson(nlohmann::json{{"id", "x"}, {"state", "weird"}, {"uid", 0}, {"gid", 0}}));
}

// The record travels with a moving job (PersistentJson in the prepare call): so does the pin.
TEST(JobRecordTest, PinnedIsPublicPersistedAndOptional) {
  JobRecord job;
  job.id = "n.2";
  job.pinned = true;
  EXPECT_EQ(ToJson(job, job.submitted_at)["pinned"], true);
  auto back = FromPersistentJson(PersistentJson(job));
  ASSERT_TRUE(back) << back.error().message;
  EXPECT_TRUE(back->pinned);
  // A record written before pins existed, or with nonsense there, is not pinned.
  auto old = PersistentJson(job);
  old.erase("pinned");
  EXPECT_FALSE(FromPersistentJson(old)->pinned);
  old["pinned"] = "yes";
  EXPECT_FALSE(FromPersistentJson(old)->pinned);
}

// status.json is written by the job's user: what tern-init writes is believed, anything else
// is nullopt and never an exception (issue 14, item 3).
TEST(JobRecordTest, ExitStatusTakesOnlyWhatTernInitWrites) {
  auto exited = ParseExitStatus(R"({"exit_code":3,"ended_at":"2026-11-24T12:00:05Z"})");
  ASSERT_TRUE(exited);
  EXPECT_EQ(exited->exit_code, 3);
  EXPECT_FALSE(exited->signal);
  EXPECT_EQ(exited->ended_at, ParseTime("2026-11-24T12:00:05Z"));
  auto killed = ParseExitStatus(R"({"signal":9})");
  ASSERT_TRUE(killed);
  EXPECT_EQ(killed->signal, 9);
  EXPECT_FALSE(killed->ended_at);
  for (const char* bad :
       {R"({"exit_code":null})", R"({"signal":null})", R"({"exit_code":"0"})",
        R"({"exit_code":1e99})", R"({"exit_code":-1})", R"({"exit_code":256})",
        R"({"exit_code":4294967296})", R"({"signal":0})", R"({"exit_code":0,"signal":9})", R"({})",
        R"([1,2])", "garbage", "", R"({"exit_code":1.5})"}) {
    EXPECT_FALSE(ParseExitStatus(bad)) << bad;
  }
  auto odd_time = ParseExitStatus(R"({"exit_code":0,"ended_at":17})");
  ASSERT_TRUE(odd_time) << "a malformed ended_at is ignored, not fatal";
  EXPECT_FALSE(odd_time->ended_at);
}

// A record travels with a migrating job: a number that is not an integer its field holds is
// refused instead of cast (1e300 as a uid was undefined behaviour; 0.9 became uid 0).
TEST(JobRecordTest, RecordIntegersMustBeIntegersInRange) {
  const std::string head = R"({"id":"node1.3","state":"exited","gid":1,)";
  ASSERT_TRUE(FromPersistentJson(nlohmann::json::parse(head + R"("uid":1000})")));
  for (const char* field :
       {R"("uid":1e300)", R"("uid":0.9)", R"("uid":-1)", R"("uid":1,"pid":1e300)",
        R"("uid":1,"rss_bytes":-5)", R"("uid":1,"pid_start_ticks":1.5)"}) {
    EXPECT_FALSE(FromPersistentJson(nlohmann::json::parse(head + field + "}"))) << field;
  }
  auto odd_exit =
      FromPersistentJson(nlohmann::json::parse(head + R"("uid":1,"exit_code":4294967296})"));
  ASSERT_TRUE(odd_exit);
  EXPECT_FALSE(odd_exit->exit_code) << "an exit code an int cannot hold is no exit code";
}

// Found by the status_json fuzz target: a far-off year overflowed the nanosecond clock (signed
// overflow, undefined behaviour) instead of being refused.
TEST(JobRecordTest, TimesTheClockCannotHoldAreRefused) {
  EXPECT_FALSE(ParseTime("8646-12-04T12:00:00Z"));
  EXPECT_FALSE(ParseTime("1000-01-01T00:00:00Z"));
  EXPECT_TRUE(ParseTime("2261-12-31T00:00:00Z"));
  EXPECT_TRUE(ParseTime("1970-01-01T00:00:00Z"));
  auto far = ParseExitStatus(R"({"exit_code":0,"ended_at":"8646-12-04T12:00:00Z"})");
  ASSERT_TRUE(far);
  EXPECT_FALSE(far->ended_at);
}

TEST(JobRecordTest, IdsHaveTheirKnownShapes) {
  for (const char* good : {"node1.3", "h5c-node_2.1234"}) EXPECT_TRUE(IsValidJobId(good)) << good;
  for (const char* bad : {"", ".", "..", "node1.", ".3", "node1.3a", "../x.1", "a/b.1", "a b.1"}) {
    EXPECT_FALSE(IsValidJobId(bad)) << bad;
  }
  EXPECT_FALSE(IsValidJobId(std::string("a\0b.1", 5)));
  EXPECT_TRUE(IsValidMigrationId("node1.3-0badc0de"));
  for (const char* bad : {"node1.3", "node1.3-0badc0d", "node1.3-0badc0dex", "node1.3-zzzzzzzz",
                          "..-0badc0de", "../../tmp/x", "node1.3-../../x"}) {
    EXPECT_FALSE(IsValidMigrationId(bad)) << bad;
  }
}

TEST(JobStoreTest, SerialsAreNeverReused) {
  const auto dir =
      std::filesystem::temp_directory_path() / ("tern-store-" + std::to_string(getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir / "jobs");
  {
    JobStore store(dir.string(), (dir / "jobs").string(), "n");
    EXPECT_EQ(*store.NextSerial(), 1u);
    EXPECT_EQ(*store.NextSerial(), 2u);
  }
  JobStore again(dir.string(), (dir / "jobs").string(), "n");
  EXPECT_EQ(*again.NextSerial(), 3u);
  // Even with the counter lost, an existing job directory is never handed out again.
  std::filesystem::remove(dir / "job_serial");
  std::filesystem::create_directories(dir / "jobs" / "n.9");
  EXPECT_EQ(*again.NextSerial(), 10u);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace tern::jobs
