#include "memfd_regions.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>

namespace tern::ipc {

bool MemfdRegions::Create(ipc::ObjectId id, std::uint64_t size) {
  UniqueFd fd(::memfd_create("tern-region", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd.valid() || ::ftruncate(fd.get(), static_cast<off_t>(size)) != 0 ||
      ::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    return false;
  }
  fds_[id] = Memfd{std::move(fd), size};
  return true;
}

std::optional<std::string> MemfdRegions::Read(ipc::ObjectId id, std::uint64_t offset,
                                              std::size_t max) {
  auto it = fds_.find(id);
  if (it == fds_.end() || offset > it->second.size) return std::nullopt;
  std::string bytes(
      static_cast<std::size_t>(std::min<std::uint64_t>(max, it->second.size - offset)), '\0');
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t got = ::pread(it->second.fd.get(), bytes.data() + done, bytes.size() - done,
                                static_cast<off_t>(offset + done));
    if (got <= 0) return std::nullopt;
    done += static_cast<std::size_t>(got);
  }
  return bytes;
}

bool MemfdRegions::Write(ipc::ObjectId id, std::uint64_t offset, std::string_view bytes) {
  auto it = fds_.find(id);
  if (it == fds_.end() || offset > it->second.size || bytes.size() > it->second.size - offset) {
    return false;
  }
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t put = ::pwrite(it->second.fd.get(), bytes.data() + done, bytes.size() - done,
                                 static_cast<off_t>(offset + done));
    if (put <= 0) return false;
    done += static_cast<std::size_t>(put);
  }
  return true;
}

int MemfdRegions::Fd(ipc::ObjectId id) const {
  auto it = fds_.find(id);
  return it == fds_.end() ? -1 : it->second.fd.get();
}

}  // namespace tern::ipc
