#include "tern/jobs/job_launcher.hpp"

#include <fcntl.h>
#include <grp.h>
#include <linux/close_range.h>
#include <pwd.h>
#include <sched.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <tern/safe_open.hpp>

#include "tern/jobs/unique_fd.hpp"

namespace tern::jobs {
namespace {

enum class Stage : int {
  kSession,
  kCgroup,
  kNetwork,
  kFds,
  kGroups,
  kGid,
  kUid,
  kVerify,
  kChdir,
  kExec
};

const char* StageText(Stage stage) {
  switch (stage) {
    case Stage::kSession:
      return "cannot start a new session";
    case Stage::kCgroup:
      return "cannot join the node's cgroup";
    case Stage::kNetwork:
      return "cannot enter the job's network namespace";
    case Stage::kFds:
      return "cannot set up stdin/stdout/stderr";
    case Stage::kGroups:
      return "cannot set supplementary groups";
    case Stage::kGid:
      return "cannot switch group";
    case Stage::kUid:
      return "cannot switch user";
    case Stage::kVerify:
      return "the user switch did not stick";
    case Stage::kChdir:
      return "cannot enter the job directory";
    case Stage::kExec:
      return "cannot start tern-init";
  }
  return "cannot start the job";
}

struct ChildFailure {
  Stage stage;
  int error;
};

// Everything the child needs, prepared before clone so that the child allocates nothing.
struct ChildPlan {
  int stdin_fd = -1, stdout_fd = -1, stderr_fd = -1, report_fd = -1, ipc_fd = -1, netns_fd = -1;
  std::vector<int> cgroup_fds;  // cgroup.procs files, opened by the parent
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> groups;
  const char* dir = nullptr;
  const char* init = nullptr;
  std::vector<char*> argv;
  std::vector<char*> envp;
};

[[noreturn]] void ChildFail(const ChildPlan& plan, Stage stage) {
  const ChildFailure failure{stage, errno};
  ssize_t ignored = ::write(plan.report_fd, &failure, sizeof failure);
  (void)ignored;
  _exit(127);
}

int ChildMain(void* arg) {
  // The child has its own copy of the plan (no CLONE_VM), so it may rearrange fds in it.
  ChildPlan& plan = *static_cast<ChildPlan*>(arg);
  // Restore default dispositions and an empty mask: the agent's are not the job's.
  sigset_t empty;
  sigemptyset(&empty);
  sigprocmask(SIG_SETMASK, &empty, nullptr);
  for (int sig = 1; sig < NSIG; ++sig) signal(sig, SIG_DFL);
  if (setsid() < 0) ChildFail(plan, Stage::kSession);
  // "0" moves the writer itself: joined here, before exec, no process of the job ever runs
  // outside the cgroup (the fds are closed with the others below).
  for (int fd : plan.cgroup_fds) {
    if (::write(fd, "0", 1) != 1) ChildFail(plan, Stage::kCgroup);
  }
  if (plan.netns_fd >= 0 && setns(plan.netns_fd, CLONE_NEWNET) != 0) {
    ChildFail(plan, Stage::kNetwork);
  }
  if (dup2(plan.stdin_fd, 0) < 0 || dup2(plan.stdout_fd, 1) < 0 || dup2(plan.stderr_fd, 2) < 0) {
    ChildFail(plan, Stage::kFds);
  }
  int first_free = 3;
  if (plan.ipc_fd >= 0) {
    // The channel becomes fd 3; the report pipe moves out of its way first.
    if (plan.report_fd == jobs::kJobIpcFd) {
      plan.report_fd = fcntl(plan.report_fd, F_DUPFD_CLOEXEC, jobs::kJobIpcFd + 1);
      if (plan.report_fd < 0) _exit(127);
    }
    if (plan.ipc_fd == jobs::kJobIpcFd) {
      if (fcntl(plan.ipc_fd, F_SETFD, 0) != 0) ChildFail(plan, Stage::kFds);
    } else if (dup2(plan.ipc_fd, jobs::kJobIpcFd) < 0) {
      ChildFail(plan, Stage::kFds);
    }
    first_free = jobs::kJobIpcFd + 1;
  }
  // Close every other fd but the report pipe (close-on-exec: it closes when tern-init starts).
  if (plan.report_fd > first_free) {
    syscall(SYS_close_range, static_cast<unsigned>(first_free), plan.report_fd - 1u, 0u);
  }
  syscall(SYS_close_range, plan.report_fd + 1u, ~0u, 0u);
  if (setgroups(plan.groups.size(), plan.groups.data()) != 0) ChildFail(plan, Stage::kGroups);
  if (setresgid(plan.gid, plan.gid, plan.gid) != 0) ChildFail(plan, Stage::kGid);
  if (setresuid(plan.uid, plan.uid, plan.uid) != 0) ChildFail(plan, Stage::kUid);
  if (getuid() != plan.uid || geteuid() != plan.uid || getgid() != plan.gid) {
    errno = EPERM;
    ChildFail(plan, Stage::kVerify);
  }
  if (chdir(plan.dir) != 0) ChildFail(plan, Stage::kChdir);
  execve(plan.init, plan.argv.data(), plan.envp.data());
  ChildFail(plan, Stage::kExec);
}

// The job's stdout or stderr, created below the job directory `dir_fd` (the user's): an
// existing symlink or FIFO there is refused, never followed or waited on.
Expected<UniqueFd> OpenOutput(int dir_fd, const std::string& dir, const std::string& name,
                              uid_t uid, gid_t gid) {
  auto fd = OpenRegularBeneath(dir_fd, name, O_WRONLY | O_CREAT | O_APPEND, 0600);
  if (!fd) return Fail(fd.error().message + " (in job directory " + dir + ")");
  if (::fchown(fd->get(), uid, gid) != 0) {
    return Fail("cannot give " + dir + "/" + name + " to uid " + std::to_string(uid) + ": " +
                std::strerror(errno));
  }
  return fd;
}

}  // namespace

std::uint64_t ProcessStartTicks(pid_t pid) {
  std::ifstream file("/proc/" + std::to_string(pid) + "/stat");
  std::string text;
  if (!std::getline(file, text)) return 0;
  // The command name (field 2) may hold spaces and parentheses: fields restart after the last ')'.
  const auto close = text.rfind(')');
  if (close == std::string::npos) return 0;
  std::istringstream rest(text.substr(close + 2));
  std::string field;
  for (int index = 3; index <= 22; ++index) {
    if (!(rest >> field)) return 0;
    if (index == 22) return std::stoull(field);
  }
  return 0;
}

Expected<LaunchedJob> LaunchJob(const LaunchSpec& spec) {
  if (spec.argv.empty()) return Fail("no command to run");
  if (::access(spec.init_path.c_str(), X_OK) != 0) {
    return Fail("tern-init is not executable at " + spec.init_path + ": " + std::strerror(errno));
  }
  // The job's directory and its output are its user's alone (0700, 0600).
  if (::mkdir(spec.dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return Fail("cannot create job directory " + spec.dir + ": " + std::strerror(errno));
  }
  auto dir_fd = OpenDirectoryNoFollow(spec.dir);
  if (!dir_fd) return Unexpected<Error>{dir_fd.error()};
  if (::fchown(dir_fd->get(), spec.uid, spec.gid) != 0 || ::fchmod(dir_fd->get(), 0700) != 0) {
    return Fail("cannot give " + spec.dir + " to uid " + std::to_string(spec.uid) + ": " +
                std::strerror(errno));
  }
  auto out = OpenOutput(dir_fd->get(), spec.dir, "stdout", spec.uid, spec.gid);
  if (!out) return Unexpected<Error>{out.error()};
  auto err = OpenOutput(dir_fd->get(), spec.dir, "stderr", spec.uid, spec.gid);
  if (!err) return Unexpected<Error>{err.error()};
  UniqueFd null_fd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  if (!null_fd.valid()) return Fail(std::string("cannot open /dev/null: ") + std::strerror(errno));

  // The user's identity: groups and login environment from passwd, when the user has an entry.
  std::map<std::string, std::string> env = spec.env;
  ChildPlan plan;
  plan.uid = spec.uid;
  plan.gid = spec.gid;
  plan.groups = {spec.gid};
  passwd entry{};
  passwd* found = nullptr;
  std::string buffer(16384, '\0');
  getpwuid_r(spec.uid, &entry, buffer.data(), buffer.size(), &found);
  if (found != nullptr) {
    int count = 64;
    plan.groups.resize(static_cast<size_t>(count));
    if (getgrouplist(found->pw_name, spec.gid, plan.groups.data(), &count) < 0) {
      plan.groups.resize(static_cast<size_t>(count));
      getgrouplist(found->pw_name, spec.gid, plan.groups.data(), &count);
    }
    plan.groups.resize(static_cast<size_t>(count));
    env["HOME"] = found->pw_dir;
    env["USER"] = found->pw_name;
    env["LOGNAME"] = found->pw_name;
    env["SHELL"] = found->pw_shell;
  } else {
    env["USER"] = env["LOGNAME"] = std::to_string(spec.uid);
    env.emplace("HOME", spec.dir);
  }
  env.emplace("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
  env["TERN_JOB_ID"] = spec.job_id;
  env["TERN_NODE"] = spec.node;
  env["TERN_JOB_DIR"] = spec.dir;

  const std::string status_file = spec.dir + "/status.json";
  std::vector<std::string> init_argv = {"tern-init", "--status-file", status_file, "--"};
  init_argv.insert(init_argv.end(), spec.argv.begin(), spec.argv.end());
  std::vector<std::string> env_strings;
  for (const auto& [key, value] : env) env_strings.push_back(key + "=" + value);
  for (auto& arg : init_argv) plan.argv.push_back(arg.data());
  plan.argv.push_back(nullptr);
  for (auto& variable : env_strings) plan.envp.push_back(variable.data());
  plan.envp.push_back(nullptr);
  plan.dir = spec.dir.c_str();
  plan.init = spec.init_path.c_str();

  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) {
    return Fail(std::string("cannot create a pipe: ") + std::strerror(errno));
  }
  UniqueFd report_read(pipe_fds[0]);
  UniqueFd report_write(pipe_fds[1]);
  plan.stdin_fd = null_fd.get();
  plan.stdout_fd = out->get();
  plan.stderr_fd = err->get();
  plan.report_fd = report_write.get();
  plan.ipc_fd = spec.ipc_fd;
  plan.netns_fd = spec.netns_fd;
  std::vector<UniqueFd> cgroup_fds;
  for (const auto& procs : spec.cgroup_procs) {
    cgroup_fds.emplace_back(::open(procs.c_str(), O_WRONLY | O_CLOEXEC));
    if (!cgroup_fds.back().valid()) {
      return Fail("cannot open " + procs + " (the node's cgroup): " + std::strerror(errno));
    }
    plan.cgroup_fds.push_back(cgroup_fds.back().get());
  }

  std::vector<char> stack(256 * 1024);
  const pid_t pid = ::clone(ChildMain, stack.data() + stack.size(), CLONE_NEWPID | SIGCHLD, &plan);
  if (pid < 0) {
    return Fail(std::string("cannot create the job's PID namespace: ") + std::strerror(errno));
  }
  report_write.Reset();
  ChildFailure failure{};
  ssize_t got;
  do {
    got = ::read(report_read.get(), &failure, sizeof failure);
  } while (got < 0 && errno == EINTR);
  if (got == static_cast<ssize_t>(sizeof failure)) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    std::string message = StageText(failure.stage);
    if (failure.stage == Stage::kUid || failure.stage == Stage::kVerify) {
      message = "cannot switch to uid " + std::to_string(spec.uid);
    }
    return Fail(message + ": " + std::strerror(failure.error));
  }
  return LaunchedJob{pid, ProcessStartTicks(pid)};
}

}  // namespace tern::jobs
