// Opening files below a directory that someone else controls, without being redirected.
//
// The agent is root; a job's directory belongs to the job's user. A user who plants a symlink
// (or a FIFO) where the agent expects a file must get nothing: a symlink is never followed, the
// opened path never leaves the directory, and opening never blocks. OpenBeneath uses
// openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS) and, on a kernel without openat2 (ENOSYS),
// walks the path one component at a time with O_NOFOLLOW.
//
// Thread-safety: stateless functions; reentrant.
#pragma once

#include <sys/types.h>

#include <string>
#include <tern/expected.hpp>
#include <tern/unique_fd.hpp>

namespace tern {

// Opens the directory at `path` (its last component must not be a symlink) for use as the
// base of OpenBeneath.
Expected<UniqueFd> OpenDirectoryNoFollow(const std::string& path);

// Opens `relative` (no leading '/', no "..") below the directory `dir_fd` with open(2) `flags`
// (O_CLOEXEC, O_NOFOLLOW and O_NONBLOCK are added), refusing any symlink on the way,
// including the last component. The error keeps errno's text ("Too many levels of symbolic
// links" for a symlink) and is named after `relative`. A file that does not exist (ENOENT,
// without O_CREAT) is not an error: the fd returned is not valid().
Expected<UniqueFd> OpenBeneath(int dir_fd, const std::string& relative, int flags, mode_t mode = 0);

// OpenBeneath, then fstat: anything but a regular file (a FIFO, a socket, a device, a
// directory) is refused. O_NONBLOCK is cleared again, so the fd behaves as usual.
Expected<UniqueFd> OpenRegularBeneath(int dir_fd, const std::string& relative, int flags,
                                      mode_t mode = 0);

}  // namespace tern
