// Unpacking a job directory on the destination only into a directory made for it.
//
// A directory that already exists may hold its user's symlinks and hard links; writing the
// archive into it as root would write through them. UnpackIntoFreshDirectory therefore makes a
// new directory beside `dir` (mkdtemp, root's, 0700), unpacks there, gives it to uid:gid with
// mode `mode`, removes what is at `dir` (without following anything: RemoveTreeNoFollow) and
// renames the new directory into place with RENAME_NOREPLACE. `dir`'s parent must be root's
// and not writable by users (the jobs directory), so nobody can put anything at `dir` between
// the removal and the rename; if someone did, the rename fails rather than replacing it. On any
// failure the new directory is removed and `dir` is left as it was. The default mode is the
// job launcher's 0700: CRIU restores a job's working directory only with the mode it dumped
// ("has bad mode 040750 (expect 040700)").
//
// Thread-safety: stateless; reentrant for distinct `dir`s.
#pragma once

#include <sys/types.h>

#include <string>
#include <tern/expected.hpp>

namespace tern::migrate {

Expected<void> UnpackIntoFreshDirectory(const std::string& archive, const std::string& dir,
                                        uid_t uid, gid_t gid, mode_t mode = 0700);

}  // namespace tern::migrate
