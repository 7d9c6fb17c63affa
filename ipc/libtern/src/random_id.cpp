#include "random_id.hpp"

#include <unistd.h>

#include <atomic>
#include <random>

namespace tern::libtern {

std::uint64_t NewRandomId() {
  static std::atomic<std::uint64_t> counter{0};
  std::random_device random;
  std::uint64_t id = (static_cast<std::uint64_t>(random()) << 32) ^ random();
  id ^= static_cast<std::uint64_t>(::getpid()) << 16;
  id += counter.fetch_add(1);
  return id == 0 ? 1 : id;
}

}  // namespace tern::libtern
