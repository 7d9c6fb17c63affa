// Fuzz target: unpacking a migration archive (migrate/src/archive.cpp), which arrives from the
// source node and holds files the job's user chose. Each run unpacks into a fresh temporary
// directory: <tmp>/tern-fuzz-archive.XXXXXX/dest (created by the unpacking, as on a
// destination), beside an empty directory "outside" and a file "canary" that nothing may
// touch; then looks up a file in the archive (ArchivedFile), and removes the temporary
// directory. Unpacking runs with uid -1 (no chown), so running as root or not only changes
// what permission errors come up.
//
// Properties checked: nothing appears or changes beside "dest" (no write through a symlink or
// "..", however the archive spells it); the bytes reported written fit in the archive.
#include <sys/stat.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <system_error>
#include <tern/migrate/archive.hpp>

#include "fuzz_check.hpp"

namespace {

namespace fs = std::filesystem;

constexpr char kCanaryText[] = "canary";

std::string MakeRoot() {
  const char* tmp = std::getenv("TMPDIR");
  std::string pattern =
      std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/tern-fuzz-archive.XXXXXX";
  FUZZ_CHECK(::mkdtemp(pattern.data()) != nullptr, "cannot make a temporary directory");
  FUZZ_CHECK(::mkdir((pattern + "/outside").c_str(), 0755) == 0, "cannot make outside/");
  std::ofstream(pattern + "/canary") << kCanaryText;
  return pattern;
}

void CheckUntouched(const std::string& root) {
  std::error_code error;
  std::set<std::string> names;
  for (const auto& entry : fs::directory_iterator(root, error)) {
    names.insert(entry.path().filename().string());
  }
  names.erase("dest");
  FUZZ_CHECK((names == std::set<std::string>{"canary", "outside"}),
             "unpacking created or removed something beside its destination");
  FUZZ_CHECK(fs::is_empty(root + "/outside", error), "unpacking wrote outside its destination");
  struct stat canary {};
  FUZZ_CHECK(::lstat((root + "/canary").c_str(), &canary) == 0 && S_ISREG(canary.st_mode) &&
                 canary.st_size == static_cast<off_t>(sizeof(kCanaryText) - 1),
             "unpacking changed a file beside its destination");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string archive(reinterpret_cast<const char*>(data), size);
  const std::string root = MakeRoot();
  const auto written = tern::migrate::UnpackDirectory(
      archive, root + "/dest", static_cast<uid_t>(-1), static_cast<gid_t>(-1), {"skipped"});
  if (written) FUZZ_CHECK(*written <= archive.size(), "more bytes written than the archive holds");
  CheckUntouched(root);
  (void)tern::migrate::ArchivedFile(archive, "stdout");
  std::error_code ignored;
  fs::remove_all(root, ignored);
  FUZZ_CHECK(!fs::exists(root, ignored), "cannot remove the temporary directory");
  return 0;
}
