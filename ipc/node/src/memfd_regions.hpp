// MemfdRegions: the agent's region memory (ipc::RegionStore), one memfd per region.
//
// A region's memfd is handed to every job that maps it (region_map, SCM_RIGHTS). It is sealed
// at creation with F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL: no job can change its size (a
// job that shrank it would make every other mapper, and the agent's copies, fault or read
// short) nor add seals of its own (F_SEAL_WRITE would make the agent's writes fail). Reads and
// writes are pread/pwrite within the size it was made with; a region over the router's cap
// never gets here.
//
// Thread-safety: none; the agent's io thread owns it.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <tern/ipc/port_router.hpp>
#include <tern/unique_fd.hpp>

namespace tern::ipc {

class MemfdRegions : public ipc::RegionStore {
 public:
  bool Create(ipc::ObjectId id, std::uint64_t size) override;
  std::optional<std::string> Read(ipc::ObjectId id, std::uint64_t offset, std::size_t max) override;
  bool Write(ipc::ObjectId id, std::uint64_t offset, std::string_view bytes) override;
  void Destroy(ipc::ObjectId id) override { fds_.erase(id); }
  // The region's memfd (owned here), or -1.
  int Fd(ipc::ObjectId id) const;

 private:
  struct Memfd {
    UniqueFd fd;
    std::uint64_t size = 0;
  };
  std::map<ipc::ObjectId, Memfd> fds_;
};

}  // namespace tern::ipc
