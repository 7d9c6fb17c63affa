// Where a pre-copy destination keeps the images it receives.
//
// CRIU's page server writes the job's memory into pages-*.img and `criu restore` then copies it
// into the job: every byte lands in memory twice at the destination. On a disk file system the
// first copy also sits in the page cache as dirty data that the kernel writes back to the disk
// meanwhile (and later removes); on a tmpfs it is only memory. So the destination mounts a tmpfs
// of its own on the image directory when it has the room (docs/migration.md "Pre-copy's
// memory"), and removes the directory with whatever is mounted in it.
//
// Thread-safety: the functions keep no state; call them off the io_context thread.
#pragma once

#include <cstdint>
#include <string>
#include <tern/expected.hpp>
#include <tern/mounts.hpp>

namespace tern::migrate {

// Mounts a private tmpfs of at most `bytes` on `dir` (an existing, empty directory).
Expected<void> MountImageTmpfs(const std::string& dir, std::uint64_t bytes);

// Detaches every mount at or under `dir` (a tmpfs of MountImageTmpfs, perhaps left by an agent
// that restarted), then removes the directory tree. Never follows a mount out of `dir`.
void RemoveImageTree(const std::string& dir);

}  // namespace tern::migrate
