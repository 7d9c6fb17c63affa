// A RegionStore for router tests that use no regions: it makes none, so a region request fails
// as it would on an agent out of memory. Thread-safety: none needed (it holds no state).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <tern/ipc/port_router.hpp>

namespace tern::ipc::test_support {

class NoRegions : public RegionStore {
 public:
  bool Create(ObjectId, std::uint64_t) override { return false; }
  std::optional<std::string> Read(ObjectId, std::uint64_t, std::size_t) override {
    return std::nullopt;
  }
  bool Write(ObjectId, std::uint64_t, std::string_view) override { return false; }
  void Destroy(ObjectId) override {}
};

}  // namespace tern::ipc::test_support
