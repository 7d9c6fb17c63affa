#include "tern/agent/restored_copy.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <tern/jobs/process_identity.hpp>

namespace tern::agent {
namespace {

namespace fs = std::filesystem;

// A live process that is not a restored copy: a child that sleeps until killed.
class Bystander {
 public:
  Bystander() {
    pid_ = ::fork();
    if (pid_ == 0) {
      ::pause();
      ::_exit(0);
    }
  }
  ~Bystander() {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }
  pid_t pid() const { return pid_; }
  bool Alive() const { return ::kill(pid_, 0) == 0; }

 private:
  pid_t pid_ = -1;
};

class RestoredCopyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = (fs::temp_directory_path() / ("tern-rc-" + std::to_string(getpid()))).string();
    fs::remove_all(dir_);
    fs::create_directories(dir_ + "/images");
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Writes a file and sets its mtime `offset` seconds from now.
  void Write(const std::string& name, const std::string& text, double offset) {
    std::ofstream(dir_ + "/" + name) << text;
    timespec now{};
    ::clock_gettime(CLOCK_REALTIME, &now);
    timespec when = now;
    when.tv_sec += static_cast<time_t>(offset);
    const timespec times[2] = {when, when};
    ASSERT_EQ(::utimensat(AT_FDCWD, (dir_ + "/" + name).c_str(), times, 0), 0);
  }

  std::string dir_;
};

TEST(ProcessIdentityTest, NamesOneProcessOnly) {
  auto self = jobs::IdentifyProcess(::getpid());
  ASSERT_TRUE(self);
  EXPECT_TRUE(jobs::IsSameProcess(*self));
  EXPECT_TRUE(jobs::OpenPidfd(*self).valid());
  auto later = *self;
  later.start_ticks += 1;  // the same pid, started at another time: another process
  EXPECT_FALSE(jobs::IsSameProcess(later));
  EXPECT_FALSE(jobs::OpenPidfd(later).valid());
  auto other_boot = *self;
  other_boot.boot_id = "00000000-0000-0000-0000-000000000000";
  EXPECT_FALSE(jobs::IsSameProcess(other_boot));
  auto parsed = jobs::ParseProcessIdentity(jobs::ToJsonText(*self));
  ASSERT_TRUE(parsed);
  EXPECT_EQ(*parsed, *self);
  EXPECT_FALSE(jobs::ParseProcessIdentity("{\"pid\":12}"));
  EXPECT_FALSE(jobs::ParseProcessIdentity("not json"));
  EXPECT_FALSE(jobs::ParseProcessIdentity("{\"pid\":-1,\"start_ticks\":5,\"boot_id\":\"x\"}"));
}

// The regression of issue 14 finding 8: CRIU's restored.pid names a live process that was not
// restored by this migration (after a reboot or a pid reuse). The old agent believed any live
// pid there, adopted it and, on abort, SIGKILLed it.
TEST_F(RestoredCopyTest, ARestoredPidOfAnUnrelatedProcessIsNotBelieved) {
  Bystander bystander;
  // The migration began (incoming.json) and CRIU wrote its pid file after the bystander
  // started: it cannot be the copy that restore made.
  Write("incoming.json", "{}", 3);
  Write("images/restored.pid", std::to_string(bystander.pid()), 4);
  EXPECT_FALSE(FindRestoredCopy(dir_));
  EXPECT_TRUE(bystander.Alive());
}

TEST_F(RestoredCopyTest, ARecordNamingAnotherProcessIsNotBelieved) {
  Bystander bystander;
  auto identity = jobs::IdentifyProcess(bystander.pid());
  ASSERT_TRUE(identity);
  auto stale = *identity;
  stale.start_ticks -= 1;  // what was recorded: the pid's earlier owner
  ASSERT_TRUE(RecordRestoredCopy(dir_, stale));
  // Even with a pid file that would pass on its own.
  Write("incoming.json", "{}", -5);
  Write("images/restored.pid", std::to_string(bystander.pid()), 5);
  EXPECT_FALSE(FindRestoredCopy(dir_));
}

TEST_F(RestoredCopyTest, TheRecordedCopyIsFound) {
  Bystander copy;  // stands for the restored copy
  auto identity = jobs::IdentifyProcess(copy.pid());
  ASSERT_TRUE(identity);
  ASSERT_TRUE(RecordRestoredCopy(dir_, *identity));
  auto found = FindRestoredCopy(dir_);
  ASSERT_TRUE(found);
  EXPECT_EQ(*found, *identity);
  // Once it is gone, the record names nothing.
  ::kill(copy.pid(), SIGKILL);
  ::waitpid(copy.pid(), nullptr, 0);
  EXPECT_FALSE(FindRestoredCopy(dir_));
}

// The agent died between CRIU's pid file and its own record: a process that started inside the
// restore's window is believed.
TEST_F(RestoredCopyTest, APidFileAloneIsBelievedForAProcessStartedDuringTheRestore) {
  Write("incoming.json", "{}", -5);
  Bystander copy;
  Write("images/restored.pid", std::to_string(copy.pid()), 0);
  auto found = FindRestoredCopy(dir_);
  ASSERT_TRUE(found);
  EXPECT_EQ(found->pid, copy.pid());
}

}  // namespace
}  // namespace tern::agent
