// Real jobs: tern-init in a new PID namespace, user switch, pidfd exit watch. Needs root.
#include "tern/jobs/job_supervisor.hpp"

#include <gtest/gtest.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace tern::jobs {
namespace {

using namespace std::chrono_literals;

std::string ReadFile(const std::string& path) {
  std::ifstream file(path);
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

class SupervisorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(geteuid(), 0u) << "these tests start jobs in PID namespaces as other users: run "
                                "them as root (deploy/test does)";
    dir_ = std::filesystem::temp_directory_path() /
           ("tern-jobs-" + std::to_string(getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    ::chmod(dir_.c_str(), 0755);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::unique_ptr<JobSupervisor> MakeSupervisor(std::chrono::milliseconds grace = 300ms) {
    SupervisorOptions options{dir_.string(), "", "testnode", TERN_INIT_PATH, grace};
    return std::make_unique<JobSupervisor>(io_, options,
                                           [this](const JobRecord& job) { last_[job.id] = job; });
  }

  // Runs the io_context until `id` reaches a final state or the deadline passes.
  std::optional<JobRecord> WaitEnded(const std::string& id, std::chrono::seconds limit = 20s) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < deadline) {
      io_.restart();
      io_.run_for(50ms);
      auto found = last_.find(id);
      if (found != last_.end() && IsFinal(found->second.state)) return found->second;
    }
    return std::nullopt;
  }

  SubmitRequest Request(std::vector<std::string> argv, uid_t uid = 0, gid_t gid = 0,
                        std::string user = "root") {
    SubmitRequest request;
    request.argv = std::move(argv);
    request.uid = uid;
    request.gid = gid;
    request.user = std::move(user);
    return request;
  }

  boost::asio::io_context io_;
  std::filesystem::path dir_;
  std::map<std::string, JobRecord> last_;
};

TEST_F(SupervisorTest, JobEndsExitedWithItsCodeAndOutputFiles) {
  auto supervisor = MakeSupervisor();
  auto job = supervisor->Submit(Request({"sh", "-c", "echo out; echo err >&2; exit 3"}));
  ASSERT_TRUE(job) << job.error().message;
  EXPECT_EQ(job->id, "testnode.1");
  EXPECT_EQ(job->state, JobState::kRunning);
  auto ended = WaitEnded(job->id);
  ASSERT_TRUE(ended);
  EXPECT_EQ(ended->state, JobState::kExited);
  EXPECT_EQ(ended->exit_code, 3);
  EXPECT_EQ(ReadFile(job->dir + "/stdout"), "out\n");
  EXPECT_EQ(ReadFile(job->dir + "/stderr"), "err\n");
}

TEST_F(SupervisorTest, JobRunsInItsOwnPidNamespaceInItsDirectory) {
  auto supervisor = MakeSupervisor();
  auto job = supervisor->Submit(
      Request({"sh", "-c", "echo $$; pwd; grep NSpid /proc/self/status; echo $TERN_JOB_ID"}));
  ASSERT_TRUE(job);
  ASSERT_TRUE(WaitEnded(job->id));
  std::istringstream out(ReadFile(job->dir + "/stdout"));
  std::string pid, cwd, nspid, id;
  std::getline(out, pid);
  std::getline(out, cwd);
  std::getline(out, nspid);
  std::getline(out, id);
  EXPECT_EQ(pid, "2") << "the command is the only child of the namespace's init (PID 1)";
  EXPECT_EQ(cwd, job->dir);
  EXPECT_EQ(std::count(nspid.begin(), nspid.end(), '\t'), 2) << nspid;  // two namespace levels
  EXPECT_EQ(id, job->id);
}

TEST_F(SupervisorTest, JobRunsAsTheRequestedUser) {
  passwd* nobody = getpwnam("nobody");
  ASSERT_NE(nobody, nullptr) << "this machine has no user 'nobody'";
  auto supervisor = MakeSupervisor();
  auto job = supervisor->Submit(Request({"id", "-u"}, nobody->pw_uid, nobody->pw_gid, "nobody"));
  ASSERT_TRUE(job);
  auto ended = WaitEnded(job->id);
  ASSERT_TRUE(ended);
  EXPECT_EQ(ended->exit_code, 0);
  EXPECT_EQ(ReadFile(job->dir + "/stdout"), std::to_string(nobody->pw_uid) + "\n");
  struct stat info {};
  ASSERT_EQ(::stat((job->dir + "/stdout").c_str(), &info), 0);
  EXPECT_EQ(info.st_uid, nobody->pw_uid);
}

// Issue 14, finding 6: a job's directory, its output and the records are not for other users;
// the job itself still reaches its directory by path.
TEST_F(SupervisorTest, JobFilesAndRecordsArePrivateAndTheJobsDirIsNotListable) {
  passwd* nobody = getpwnam("nobody");
  ASSERT_NE(nobody, nullptr) << "this machine has no user 'nobody'";
  auto supervisor = MakeSupervisor();
  auto job = supervisor->Submit(
      Request({"sh", "-c",
               "echo mine > \"$TERN_JOB_DIR/mine\" && echo reached; "
               "ls \"$TERN_JOB_DIR/..\" >/dev/null 2>&1 && echo listed-jobs; "
               "ls \"$TERN_JOB_DIR/../../records\" >/dev/null 2>&1 && echo listed-records; true"},
              nobody->pw_uid, nobody->pw_gid, "nobody"));
  ASSERT_TRUE(job) << job.error().message;
  auto ended = WaitEnded(job->id);
  ASSERT_TRUE(ended);
  EXPECT_EQ(ReadFile(job->dir + "/stdout"), "reached\n") << ReadFile(job->dir + "/stderr");
  const auto mode = [](const std::string& path) {
    struct stat info {};
    EXPECT_EQ(::lstat(path.c_str(), &info), 0) << path;
    return info.st_mode & 07777;
  };
  EXPECT_EQ(mode(job->dir), 0700u);
  EXPECT_EQ(mode(job->dir + "/stdout"), 0600u);
  EXPECT_EQ(mode(job->dir + "/stderr"), 0600u);
  EXPECT_EQ(mode((dir_ / "jobs").string()), 0711u);
  EXPECT_EQ(mode((dir_ / "records").string()), 0700u);
  EXPECT_EQ(mode((dir_ / "records" / (job->id + ".json")).string()), 0600u);
}

TEST_F(SupervisorTest, MissingCommandExits127WithAClearMessage) {
  auto supervisor = MakeSupervisor();
  auto job = supervisor->Submit(Request({"/no/such/command"}));
  ASSERT_TRUE(job);
  auto ended = WaitEnded(job->id);
  ASSERT_TRUE(ended);
  EXPECT_EQ(ended->exit_code, 127);
  EXPECT_NE(ReadFile(job->dir + "/stderr").find("cannot run /no/such/command"), std::string::npos);
}

TEST_F(SupervisorTest, CancelEndsAJobQuickly) {
  auto supervisor = MakeSupervisor();
  auto job = supervisor->Submit(Request({"sleep", "1000"}));
  ASSERT_TRUE(job);
  ASSERT_TRUE(supervisor->Cancel(job->id));
  const auto start = std::chrono::steady_clock::now();
  auto ended = WaitEnded(job->id);
  ASSERT_TRUE(ended);
  EXPECT_EQ(ended->state, JobState::kCancelled);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
  EXPECT_FALSE(supervisor->Cancel(job->id)) << "cancelling an ended job is an error";
}

TEST_F(SupervisorTest, JobIgnoringTermIsKilledAfterTheGrace) {
  auto supervisor = MakeSupervisor(300ms);
  auto job = supervisor->Submit(Request({"sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"}));
  ASSERT_TRUE(job);
  io_.run_for(200ms);  // let the shell install its trap
  ASSERT_TRUE(supervisor->Cancel(job->id));
  auto ended = WaitEnded(job->id);
  ASSERT_TRUE(ended);
  EXPECT_EQ(ended->state, JobState::kCancelled);
  EXPECT_FALSE(std::filesystem::exists("/proc/" + std::to_string(job->pid) + "/stat") &&
               ReadFile("/proc/" + std::to_string(job->pid) + "/stat").find(" Z ") ==
                   std::string::npos)
      << "the job's init still runs";
}

TEST_F(SupervisorTest, KilledBySignalIsKilled) {
  auto supervisor = MakeSupervisor();
  auto job = supervisor->Submit(Request({"sh", "-c", "kill -9 $$"}));
  ASSERT_TRUE(job);
  auto ended = WaitEnded(job->id);
  ASSERT_TRUE(ended);
  EXPECT_EQ(ended->state, JobState::kKilled);
  EXPECT_EQ(ended->signal, 9);
}

TEST_F(SupervisorTest, ANewSupervisorAdoptsARunningJob) {
  std::string id;
  {
    auto first = MakeSupervisor();
    auto job = first->Submit(Request({"sleep", "1"}));
    ASSERT_TRUE(job);
    id = job->id;
  }  // the agent goes away; the job keeps running
  auto second = MakeSupervisor();
  second->Adopt();
  auto adopted = second->Get(id);
  ASSERT_TRUE(adopted);
  EXPECT_EQ(adopted->state, JobState::kRunning);
  auto ended = WaitEnded(id);
  ASSERT_TRUE(ended);
  EXPECT_EQ(ended->state, JobState::kExited);
  EXPECT_EQ(ended->exit_code, 0);
  EXPECT_EQ(second->Submit(Request({"true"}))->id, "testnode.2") << "serials continue";
}

TEST_F(SupervisorTest, FailedLaunchIsRecordedNotLost) {
  SupervisorOptions options{dir_.string(), "", "testnode", "/nonexistent/tern-init", 300ms};
  JobSupervisor supervisor(io_, options, nullptr);
  auto job = supervisor.Submit(Request({"true"}));
  ASSERT_TRUE(job);
  EXPECT_EQ(job->state, JobState::kFailed);
  EXPECT_NE(job->error.find("tern-init"), std::string::npos);
  JobSupervisor reloaded(io_, options, nullptr);
  reloaded.Adopt();
  ASSERT_TRUE(reloaded.Get(job->id));
  EXPECT_EQ(reloaded.Get(job->id)->state, JobState::kFailed);
}

// A job controls its status.json (tern-init runs as its user). Junk there, kept in place by
// making status.json.tmp a directory so tern-init cannot replace it, once made Finish throw
// out of the io loop (issue 14, item 3): now the init's own exit status decides.
TEST_F(SupervisorTest, JunkInStatusJsonFallsBackToTheInitsExitStatus) {
  auto supervisor = MakeSupervisor();
  for (const char* junk : {R"({"exit_code":null})", R"({"exit_code":"x","ended_at":5})", "junk"}) {
    const std::string script =
        std::string("mkdir status.json.tmp; printf '%s' '") + junk + "' > status.json; exit 5";
    auto job = supervisor->Submit(Request({"sh", "-c", script}));
    ASSERT_TRUE(job) << job.error().message;
    auto ended = WaitEnded(job->id);
    ASSERT_TRUE(ended) << junk;
    EXPECT_EQ(ended->state, JobState::kExited) << junk;
    EXPECT_EQ(ended->exit_code, 5) << junk;
  }
}

TEST_F(SupervisorTest, AFifoForStatusJsonDoesNotBlockTheAgent) {
  auto supervisor = MakeSupervisor();
  auto job = supervisor->Submit(
      Request({"sh", "-c", "mkdir status.json.tmp; mkfifo status.json; exit 4"}));
  ASSERT_TRUE(job) << job.error().message;
  auto ended = WaitEnded(job->id);
  ASSERT_TRUE(ended);
  EXPECT_EQ(ended->exit_code, 4);
}

TEST_F(SupervisorTest, ASymlinkedStatusJsonIsNotFollowed) {
  const std::string planted = (dir_ / "planted.json").string();
  std::ofstream(planted) << R"({"exit_code":42})";
  auto supervisor = MakeSupervisor();
  auto job = supervisor->Submit(
      Request({"sh", "-c", "mkdir status.json.tmp; ln -sf " + planted + " status.json; exit 6"}));
  ASSERT_TRUE(job) << job.error().message;
  auto ended = WaitEnded(job->id);
  ASSERT_TRUE(ended);
  EXPECT_EQ(ended->exit_code, 6) << "the agent read through the job's symlink";
}

// A user whose job directory already exists (one it left behind) cannot make the root agent
// append to, or chown, a file elsewhere by planting stdout as a symlink.
TEST_F(SupervisorTest, AStdoutSymlinkInTheJobDirectoryIsRefusedAtLaunch) {
  const auto target = dir_ / "victim";
  std::ofstream(target) << "untouched";
  passwd* nobody = getpwnam("nobody");
  ASSERT_NE(nobody, nullptr);
  auto supervisor = MakeSupervisor();
  // A job named by its home node (a forwarded submit) lands in a directory of known name.
  const auto job_dir = dir_ / "jobs" / "home.7";
  std::filesystem::create_directories(job_dir);
  std::filesystem::create_symlink(target, job_dir / "stdout");
  auto request = Request({"echo", "pwned"}, nobody->pw_uid, nobody->pw_gid, "nobody");
  request.id = "home.7";
  request.home_node = "home";
  auto job = supervisor->Submit(request);
  ASSERT_TRUE(job) << job.error().message;
  EXPECT_EQ(job->state, JobState::kFailed);
  EXPECT_NE(job->error.find("stdout"), std::string::npos) << job->error;
  EXPECT_EQ(ReadFile(target.string()), "untouched");
  struct stat info {};
  ASSERT_EQ(::stat(target.c_str(), &info), 0);
  EXPECT_EQ(info.st_uid, 0u) << "the symlink's target was given to the job's user";
  request.id = "../../escape.1";
  EXPECT_FALSE(supervisor->Submit(request)) << "a forwarded id is a file name: shape-checked";
}

}  // namespace
}  // namespace tern::jobs
