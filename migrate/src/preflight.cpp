#include "tern/migrate/preflight.hpp"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>

#include "tern/migrate/criu.hpp"
#include "tern/migrate/safe_open.hpp"

namespace tern::migrate {
namespace fs = std::filesystem;

namespace {

std::string Hex(const unsigned char* bytes, unsigned length) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < length; ++i) {
    out.push_back(digits[bytes[i] >> 4]);
    out.push_back(digits[bytes[i] & 15]);
  }
  return out;
}

std::string Octal(std::uint32_t mode) {
  char text[16];
  std::snprintf(text, sizeof text, "%o", mode);
  return text;
}

}  // namespace

Expected<OutsideFile> FingerprintFile(const std::string& path, std::uint64_t max_bytes) {
  if (path.empty() || path.front() != '/') return Fail(path + " is not an absolute path");
  auto root = OpenDirectoryNoFollow("/");
  if (!root) return Unexpected<Error>{root.error()};
  // Beneath "/" with no symlinks: the path /proc showed at the source is already free of them,
  // so a symlink anywhere on it here is not the same file.
  auto opened = OpenRegularBeneath(root->get(), path.substr(1), O_RDONLY | O_NOCTTY);
  if (!opened) return Unexpected<Error>{Error{path + ": " + opened.error().message}};
  if (!opened->valid()) return Fail(path + " does not exist");
  struct stat info {};
  if (::fstat(opened->get(), &info) != 0) return Fail("cannot stat " + path);
  OutsideFile file;
  file.path = path;
  file.size = static_cast<std::uint64_t>(info.st_size);
  file.uid = info.st_uid;
  file.gid = info.st_gid;
  file.mode = info.st_mode;
  if (file.size > max_bytes) {
    return Fail(path + " is " + std::to_string(file.size >> 20) + " MiB, more than the " +
                std::to_string(max_bytes >> 20) + " MiB the pre-flight can compare");
  }
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> digest(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (!digest || EVP_DigestInit_ex(digest.get(), EVP_sha256(), nullptr) != 1) {
    return Fail("cannot hash " + path + ": no SHA-256");
  }
  std::uint64_t total = 0;
  std::string buffer(1 << 16, '\0');
  for (;;) {
    const ssize_t n = ::read(opened->get(), buffer.data(), buffer.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Fail("cannot read " + path + ": " + std::strerror(errno));
    if (n == 0) break;
    total += static_cast<std::uint64_t>(n);
    if (total > max_bytes) return Fail(path + " grew while it was read");
    EVP_DigestUpdate(digest.get(), buffer.data(), static_cast<size_t>(n));
  }
  if (total != file.size) return Fail(path + " changed size while it was read");
  unsigned char sum[EVP_MAX_MD_SIZE];
  unsigned length = 0;
  EVP_DigestFinal_ex(digest.get(), sum, &length);
  file.sha256 = Hex(sum, length);
  return file;
}

OpenFileKind ClassifyOpenFile(const std::string& target, const std::string& job_dir) {
  if (target.rfind("socket:", 0) == 0) return OpenFileKind::kSocket;
  if (target.rfind("pipe:", 0) == 0 || target.rfind("anon_inode:", 0) == 0) {
    return OpenFileKind::kFine;
  }
  if (target.rfind("/dev/pts/", 0) == 0 || target.rfind("/dev/tty", 0) == 0 ||
      target == "/dev/console" || target == "/dev/ptmx") {
    return OpenFileKind::kTerminal;
  }
  static const std::set<std::string> harmless = {"/dev/null", "/dev/zero", "/dev/random",
                                                 "/dev/urandom", "/dev/full"};
  if (target.rfind("/dev/", 0) == 0) {
    return harmless.count(target) ? OpenFileKind::kFine : OpenFileKind::kDevice;
  }
  if (target.rfind(job_dir + "/", 0) == 0 || target == job_dir) return OpenFileKind::kInsideJob;
  if (!target.empty() && target[0] == '/') return OpenFileKind::kOutsideJob;
  return OpenFileKind::kFine;
}

std::string JobChannelSocket(pid_t init_pid) {
  std::error_code error;
  const std::string target =
      fs::read_symlink("/proc/" + std::to_string(init_pid) + "/fd/3", error).string();
  return !error && target.rfind("socket:[", 0) == 0 ? target : std::string();
}

std::string ExternalUnixSocket(const std::string& channel) {
  const auto open = channel.find('[');
  const auto close = channel.find(']');
  if (open == std::string::npos || close == std::string::npos) return "";
  return "unix[" + channel.substr(open + 1, close - open - 1) + "]";
}

JobScan ScanJob(pid_t init_pid, const std::string& job_dir, const std::set<std::string>& direct) {
  JobScan scan;
  scan.channel = JobChannelSocket(init_pid);
  std::set<std::string> seen;
  const long page = sysconf(_SC_PAGESIZE);
  for (pid_t pid : NamespacePids(init_pid)) {
    ++scan.processes;
    std::ifstream statm("/proc/" + std::to_string(pid) + "/statm");
    std::uint64_t size = 0, resident = 0;
    if (statm >> size >> resident) scan.rss_bytes += resident * static_cast<std::uint64_t>(page);
    std::error_code error;
    for (const auto& entry :
         fs::directory_iterator("/proc/" + std::to_string(pid) + "/fd", error)) {
      std::error_code link_error;
      const std::string target = fs::read_symlink(entry.path(), link_error).string();
      if (link_error) continue;
      const std::string where =
          "fd " + entry.path().filename().string() + " of pid " + std::to_string(pid);
      if (!scan.channel.empty() && target == scan.channel) continue;
      if (direct.contains(target)) {
        ++scan.direct_sockets;
        continue;
      }
      switch (ClassifyOpenFile(target, job_dir)) {
        case OpenFileKind::kTerminal:
          scan.blockers.push_back(where + " is a terminal (" + target +
                                  "); a terminal cannot follow the job");
          break;
        case OpenFileKind::kSocket:
          scan.blockers.push_back(where + " is a socket (" + target +
                                  "); its other end would stay behind");
          break;
        case OpenFileKind::kDevice:
          scan.blockers.push_back(where + " is the device " + target +
                                  ", which cannot follow the job");
          break;
        case OpenFileKind::kOutsideJob:
          if (seen.insert(target).second) {
            auto file = FingerprintFile(target);
            if (file) {
              scan.outside.push_back(std::move(*file));
            } else {
              scan.blockers.push_back(where + " is outside the job directory and cannot be " +
                                      "compared with the destination's: " + file.error().message);
            }
          }
          break;
        default:
          break;
      }
    }
  }
  if (scan.processes == 0) scan.blockers.push_back("the job has no running process");
  return scan;
}

std::vector<std::string> CompareFiles(const std::vector<OutsideFile>& files,
                                      const std::string& node_name) {
  std::vector<std::string> problems;
  for (const auto& file : files) {
    const std::string held = "the job holds " + file.path + " open, and ";
    if (file.sha256.empty()) {
      problems.push_back(held + "the source sent no content hash to compare " + node_name +
                         "'s copy with");
      continue;
    }
    auto here = FingerprintFile(file.path);
    if (!here) {
      problems.push_back(held + "on " + node_name +
                         " it cannot be compared: " + here.error().message);
      continue;
    }
    std::vector<std::string> differences;
    if ((here->mode & S_IFMT) != (file.mode & S_IFMT)) differences.push_back("file type");
    if (here->uid != file.uid || here->gid != file.gid) {
      differences.push_back("owner " + std::to_string(here->uid) + ":" + std::to_string(here->gid) +
                            " vs " + std::to_string(file.uid) + ":" + std::to_string(file.gid));
    }
    if ((here->mode & 07777) != (file.mode & 07777)) {
      differences.push_back("mode " + Octal(here->mode & 07777) + " vs " +
                            Octal(file.mode & 07777));
    }
    if (here->size != file.size) {
      differences.push_back("size " + std::to_string(here->size) + " vs " +
                            std::to_string(file.size));
    } else if (here->sha256 != file.sha256) {
      differences.push_back("content (SHA-256)");
    }
    if (differences.empty()) continue;
    std::string text;
    for (const auto& difference : differences) text += (text.empty() ? "" : ", ") + difference;
    problems.push_back(held + node_name + "'s copy differs: " + text);
  }
  return problems;
}

}  // namespace tern::migrate
