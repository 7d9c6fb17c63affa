// A flat archive of the regular files and symlinks below a directory — how a job's checkpoint
// images and its job directory travel to the destination inside one message.
//
// Format: repeated [u32 path length][path][u64 size][u32 mode][bytes], big-endian, paths
// relative to the directory. A regular file's mode holds its permission bits only; a
// symlink's is S_IFLNK|0777 and its bytes are the link's target. Packing never reads through a
// symlink (the job's user may point one at /etc/shadow). Unpacking refuses absolute paths, "."
// and "..", walks directories with O_NOFOLLOW and refuses a symlink, FIFO or multiply-linked
// file in the way: an archive can only write below its destination, never through a link.
//
// Thread-safety: pure functions over the file system; reentrant.
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <tern/expected.hpp>

namespace tern::migrate {

// Packs every regular file and symlink below `dir` (recursively) whose relative path is not in
// `skip`.
Expected<std::string> PackDirectory(const std::string& dir, const std::set<std::string>& skip,
                                    std::uint64_t max_bytes);
// Writes the archive's files below `dir`, owned by uid:gid (unless uid is -1), except those
// whose relative path is in `skip`. Returns the number of bytes written.
Expected<std::uint64_t> UnpackDirectory(const std::string& archive, const std::string& dir,
                                        uid_t uid = static_cast<uid_t>(-1),
                                        gid_t gid = static_cast<gid_t>(-1),
                                        const std::set<std::string>& skip = {});
// The bytes of the file at `relative` in the archive.
Expected<std::string> ArchivedFile(const std::string& archive, const std::string& relative);

}  // namespace tern::migrate
