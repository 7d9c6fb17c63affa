#include "tern/agent/migration_file_store.hpp"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <tern/jobs/job_store.hpp>
#include <tern/migrate/protocol_codec.hpp>
#include <tern/unique_fd.hpp>

namespace tern::agent {
namespace {

namespace fs = std::filesystem;

Expected<void> SyncDirectory(const std::string& dir) {
  UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid() || ::fsync(fd.get()) != 0) {
    return Fail("cannot sync " + dir + ": " + std::strerror(errno));
  }
  return {};
}

// Makes `dir` (0700) if it is missing; a new entry is durable once its parent is synced.
Expected<void> MakeDirectory(const std::string& dir) {
  if (::mkdir(dir.c_str(), 0700) != 0) {
    if (errno == EEXIST) return {};
    return Fail("cannot create " + dir + ": " + std::strerror(errno));
  }
  return SyncDirectory(fs::path(dir).parent_path().string());
}

}  // namespace

MigrationFileStore::MigrationFileStore(std::string migrations_dir)
    : dir_(std::move(migrations_dir)) {}

Expected<void> MigrationFileStore::Save(const migrate::MigrationRecord& record) {
  const std::string& id =
      std::visit([](const auto& r) -> const std::string& { return r.id; }, record);
  // The id names a directory: only the shape the codec accepts passes.
  if (!migrate::IsMigrationId(id)) return Fail("'" + id + "' is not a migration id");
  if (auto made = MakeDirectory(dir_); !made) return made;
  const std::string move_dir = dir_ + "/" + id;
  if (auto made = MakeDirectory(move_dir); !made) return made;
  return jobs::WriteFileAtomically(move_dir + "/record", migrate::EncodeRecord(record), 0600);
}

void MigrationFileStore::Forget(const std::string& id) {
  if (!migrate::IsMigrationId(id)) return;
  const std::string move_dir = dir_ + "/" + id;
  if (::unlink((move_dir + "/record").c_str()) == 0) (void)SyncDirectory(move_dir);
}

std::optional<migrate::MigrationRecord> MigrationFileStore::Load(const std::string& id) const {
  if (!migrate::IsMigrationId(id)) return std::nullopt;
  const std::string path = dir_ + "/" + id + "/record";
  std::ifstream file(path, std::ios::binary);
  if (!file) return std::nullopt;
  const std::string bytes{std::istreambuf_iterator<char>(file), {}};
  auto record = migrate::DecodeRecord(bytes);
  if (!record) {
    spdlog::warn("migration {}: cannot read {}: {}", id, path, record.error().message);
    return std::nullopt;
  }
  const std::string& named =
      std::visit([](const auto& r) -> const std::string& { return r.id; }, *record);
  if (named != id) {
    spdlog::warn("migration {}: {} names another move ({})", id, path, named);
    return std::nullopt;
  }
  return std::move(*record);
}

std::vector<migrate::MigrationRecord> MigrationFileStore::LoadAll() {
  std::vector<migrate::MigrationRecord> records;
  std::error_code error;
  for (const auto& entry : fs::directory_iterator(dir_, error)) {
    if (auto record = Load(entry.path().filename().string())) records.push_back(std::move(*record));
  }
  return records;
}

}  // namespace tern::agent
