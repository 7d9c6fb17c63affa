// Files in a job's directory, opened the way root must open what a user controls.
//
// A job's directory belongs to its user, who may replace stdout, status.json or anything else
// there with a symlink (to /etc/shadow), a FIFO (to hang the agent) or a huge file. Everything
// the agent opens there goes through these: no symlink is followed, the path stays below the
// directory, opening never blocks, only regular files are accepted and reads are bounded.
//
// Thread-safety: stateless functions; reentrant.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <tern/expected.hpp>

#include "tern/jobs/unique_fd.hpp"

namespace tern::jobs {

// Opens `name` (relative) below the job directory `dir` with open(2) `flags`. A missing file
// (without O_CREAT) gives an fd that is not valid(); a symlink, a FIFO or any other
// non-regular file is an error that names the file.
Expected<UniqueFd> OpenJobFile(const std::string& dir, const std::string& name, int flags,
                               mode_t mode = 0);

// The whole of `name` below `dir`, at most `max_bytes` of it: a larger file is an error, a
// missing one is empty.
Expected<std::string> ReadJobFile(const std::string& dir, const std::string& name,
                                  std::uint64_t max_bytes);

// Up to `limit` bytes of the open regular file `fd` from `offset`; `size` receives the file's
// size.
Expected<std::string> ReadRange(int fd, std::uint64_t offset, std::uint64_t limit,
                                std::uint64_t& size);

}  // namespace tern::jobs
