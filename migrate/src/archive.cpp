#include "tern/migrate/archive.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace tern::migrate {
namespace fs = std::filesystem;
namespace {

void PutU32(std::string& out, std::uint32_t value) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<char>(value >> shift));
}
void PutU64(std::string& out, std::uint64_t value) {
  for (int shift = 56; shift >= 0; shift -= 8) out.push_back(static_cast<char>(value >> shift));
}
bool GetUint(const std::string& in, size_t& offset, int bytes, std::uint64_t& value) {
  if (in.size() - offset < static_cast<size_t>(bytes)) return false;
  value = 0;
  for (int i = 0; i < bytes; ++i) value = value << 8 | static_cast<unsigned char>(in[offset++]);
  return true;
}

}  // namespace

Expected<std::string> PackDirectory(const std::string& dir, const std::set<std::string>& skip,
                                    std::uint64_t max_bytes) {
  std::string out;
  std::error_code error;
  for (const auto& entry : fs::recursive_directory_iterator(dir, error)) {
    if (!entry.is_regular_file()) continue;
    const std::string relative = fs::relative(entry.path(), dir).string();
    if (skip.count(relative) != 0) continue;
    std::ifstream file(entry.path(), std::ios::binary);
    if (!file) return Fail("cannot read " + entry.path().string());
    std::stringstream data;
    data << file.rdbuf();
    const std::string bytes = data.str();
    if (out.size() + bytes.size() > max_bytes) {
      return Fail(dir + " holds more than " + std::to_string(max_bytes >> 20) +
                  " MiB to carry with the job");
    }
    struct stat info {};
    ::stat(entry.path().c_str(), &info);
    PutU32(out, static_cast<std::uint32_t>(relative.size()));
    out += relative;
    PutU64(out, bytes.size());
    PutU32(out, info.st_mode & 07777);
    out += bytes;
  }
  if (error) return Fail("cannot list " + dir + ": " + error.message());
  return out;
}

Expected<std::uint64_t> UnpackDirectory(const std::string& archive, const std::string& dir,
                                        uid_t uid, gid_t gid) {
  size_t offset = 0;
  std::uint64_t written = 0;
  while (offset < archive.size()) {
    std::uint64_t path_length = 0, size = 0, mode = 0;
    if (!GetUint(archive, offset, 4, path_length) || archive.size() - offset < path_length) {
      return Fail("archive truncated");
    }
    const std::string relative = archive.substr(offset, path_length);
    offset += path_length;
    if (!GetUint(archive, offset, 8, size) || !GetUint(archive, offset, 4, mode) ||
        archive.size() - offset < size) {
      return Fail("archive truncated");
    }
    const fs::path path(relative);
    if (relative.empty() || path.is_absolute() ||
        std::any_of(path.begin(), path.end(), [](const fs::path& part) { return part == ".."; })) {
      return Fail("archive holds an unsafe path: " + relative);
    }
    const fs::path target = fs::path(dir) / path;
    std::error_code error;
    fs::create_directories(target.parent_path(), error);
    {
      std::ofstream file(target, std::ios::binary | std::ios::trunc);
      file.write(archive.data() + offset, static_cast<std::streamsize>(size));
      if (!file) return Fail("cannot write " + target.string());
    }
    ::chmod(target.c_str(), static_cast<mode_t>(mode));
    if (uid != static_cast<uid_t>(-1)) {
      if (::chown(target.c_str(), uid, gid) != 0) return Fail("cannot chown " + target.string());
    }
    offset += size;
    written += size;
  }
  return written;
}

}  // namespace tern::migrate
