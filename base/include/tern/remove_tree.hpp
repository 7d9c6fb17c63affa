// Removing a directory tree that someone else may have written into, without being redirected.
//
// The agent is root; a job directory belongs to the job's user, who may plant a symlink to /etc
// in it, or swap a subdirectory for a symlink while the agent walks it. RemoveTreeNoFollow
// walks through directory fds only: each entry is looked at with fstatat(AT_SYMLINK_NOFOLLOW),
// a subdirectory is opened with openat(O_NOFOLLOW | O_DIRECTORY) relative to its parent's fd,
// and everything is removed with unlinkat on that fd. A symlink is removed as a link, never
// followed; a directory swapped for a symlink mid-walk fails to open (ELOOP/ENOTDIR) and is then
// unlinked as the link it has become. Nothing outside `path` is touched. Mount points below
// `path` are not crossed (their contents are left, and removing the mount point fails).
//
// Thread-safety: stateless; reentrant.
#pragma once

#include <string>
#include <tern/expected.hpp>

namespace tern {

// Removes `path` and everything below it. The last component of `path` itself must not be a
// symlink (if it is, only the link is removed). A missing `path` is not an error. The error
// names the first entry that could not be removed; the walk goes on past it.
Expected<void> RemoveTreeNoFollow(const std::string& path);

}  // namespace tern
