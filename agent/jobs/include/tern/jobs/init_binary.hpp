// PlaceInit: finds a tern-init that every job's user can execute and that no user can replace.
//
// Jobs start as their own users, so the agent's `exec` of tern-init happens after the switch to
// the job's uid: the file must be executable by every user (each directory on its path
// searchable by others), and since root jobs run it too, neither it nor a directory above it
// may be writable by anyone but root. A checkout under /root (mode 0700) or a build tree owned
// by a developer fails that.
//
// Contract:
//  - When `source` passes, it is used as it is (an installed /usr/lib/tern/tern-init, or a
//    build tree every user can reach).
//  - Otherwise the agent copies it to `<state_dir>/libexec/tern-init` (directory 0755, file
//    0755, both root's), keeping the source's modification time so that every node's copy of
//    one build is identical (a migrated job's executable is found again at the same path on
//    the destination). An identical copy already there is left alone: it may be running.
//    The copy is written to a temporary name, synced and renamed into place.
//  - The result says which path to run and, when even the copy cannot be run by other users
//    (the state dir itself is unreachable), `others_can_run` is false and `problem` says why:
//    root's jobs still start; other users' jobs fail with that message.
//  - Failure (no source, copy failed) returns an Error naming the path and the cause.
//
// Thread-safety: a plain function; it touches the file system only.
#pragma once

#include <string>
#include <tern/expected.hpp>

namespace tern::jobs {

struct InitPlacement {
  std::string path;        // what to exec
  bool copied = false;     // path is the agent's copy in the state dir
  std::string why_copied;  // what was wrong with the source (when copied)
  bool others_can_run = true;
  std::string problem;  // why others cannot run it (empty when they can)
};

Expected<InitPlacement> PlaceInit(const std::string& source, const std::string& state_dir);

// Empty when every user can execute `path` and only root can replace it or a directory above
// it; otherwise the first reason found, naming the path that fails
// (e.g. "/root is mode 0700: other users cannot enter it").
std::string WhyOthersCannotRun(const std::string& path);

}  // namespace tern::jobs
