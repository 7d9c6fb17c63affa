#include "tern/jobs/job_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <tern/safe_open.hpp>

namespace tern::jobs {

Expected<UniqueFd> OpenJobFile(const std::string& dir, const std::string& name, int flags,
                               mode_t mode) {
  auto dir_fd = OpenDirectoryNoFollow(dir);
  if (!dir_fd) return Unexpected<Error>{dir_fd.error()};
  auto fd = OpenRegularBeneath(dir_fd->get(), name, flags, mode);
  if (!fd) return Fail(fd.error().message + " (in job directory " + dir + ")");
  return fd;
}

Expected<std::string> ReadRange(int fd, std::uint64_t offset, std::uint64_t limit,
                                std::uint64_t& size) {
  struct stat info {};
  if (::fstat(fd, &info) != 0) return Fail(std::string("cannot stat: ") + std::strerror(errno));
  size = static_cast<std::uint64_t>(info.st_size);
  std::string data;
  if (offset >= size) return data;
  data.resize(static_cast<size_t>(std::min(limit, size - offset)));
  size_t have = 0;
  while (have < data.size()) {
    const ssize_t n =
        ::pread(fd, data.data() + have, data.size() - have, static_cast<off_t>(offset + have));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Fail(std::string("cannot read: ") + std::strerror(errno));
    if (n == 0) break;  // it shrank meanwhile
    have += static_cast<size_t>(n);
  }
  data.resize(have);
  return data;
}

Expected<std::string> ReadJobFile(const std::string& dir, const std::string& name,
                                  std::uint64_t max_bytes) {
  auto fd = OpenJobFile(dir, name, O_RDONLY);
  if (!fd) return Unexpected<Error>{fd.error()};
  if (!fd->valid()) return std::string();
  std::uint64_t size = 0;
  auto data = ReadRange(fd->get(), 0, max_bytes + 1, size);
  if (!data) return Fail("cannot read " + name + " in " + dir + ": " + data.error().message);
  if (data->size() > max_bytes) {
    return Fail(name + " in " + dir + " is larger than " + std::to_string(max_bytes) + " bytes");
  }
  return data;
}

}  // namespace tern::jobs
