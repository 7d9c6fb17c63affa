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
