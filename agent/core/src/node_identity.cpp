#include "tern/agent/node_identity.hpp"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

namespace tern::agent {

std::string NodeIdHex(std::uint64_t id) {
  char text[17] = {};
  std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(id));
  return text;
}

Expected<NodeIdentity> LoadOrCreateNodeIdentity(const std::string& state_dir,
                                                const std::string& name) {
  std::error_code error;
  std::filesystem::create_directories(state_dir, error);
  if (error) return Fail("cannot create state dir " + state_dir + ": " + error.message());
  const std::string path = state_dir + "/node_id";
  NodeIdentity identity{name, 0};
  if (std::ifstream file(path); file) {
    std::string text;
    file >> text;
    try {
      identity.id = std::stoull(text, nullptr, 16);
    } catch (const std::exception&) {
      return Fail(path + " is corrupt (want 16 hex digits); remove it to make a new node id");
    }
    if (identity.id != 0) return identity;
  }
  std::random_device entropy;
  while (identity.id == 0) {
    identity.id = (static_cast<std::uint64_t>(entropy()) << 32) | entropy();
  }
  const std::string temporary = path + ".tmp";
  {
    std::ofstream file(temporary, std::ios::trunc);
    file << NodeIdHex(identity.id) << "\n";
    if (!file) return Fail("cannot write " + temporary + ": " + std::strerror(errno));
  }
  std::filesystem::rename(temporary, path, error);
  if (error) return Fail("cannot write " + path + ": " + error.message());
  return identity;
}

}  // namespace tern::agent
