// The network side of moving a `--net` job (docs/networking.md "Moving"): the steps the
// migration driver takes at the freeze, the commit and an abort, kept out of the driver so
// that it only calls them.
//
//   source, before the dump:  LockJobNetwork — the node side of the job's veth goes down:
//                             nothing reaches the job or leaves it, the node stops answering
//                             ARP for its address (CRIU's own lock is skipped).
//   destination, commit:      ClaimJobAddress — its veth up, the route, a gratuitous ARP on the
//                             uplink: every node and the host send to this node from now on.
//   source, commit:           jobs::RemoveJobLink after the frozen copy is killed.
//   source, abort:            UnlockJobNetwork — TCP repair off, veth up, route back, ARP.
//
// All are no-ops for a job without an address. Thread-safety: reentrant; each call blocks for
// a few netlink round trips (well under a millisecond here).
#pragma once

#include <sys/types.h>

#include <string>
#include <tern/expected.hpp>
#include <tern/jobs/job_record.hpp>

namespace tern::agent {

Expected<void> LockJobNetwork(const jobs::JobRecord& job);
void UnlockJobNetwork(const jobs::JobRecord& job, const std::string& uplink);
void ClaimJobAddress(const jobs::JobRecord& job, const std::string& uplink);
// The inode of the job's own network namespace for CRIU's --external; 0 without --net.
ino_t JobNetns(const jobs::JobRecord& job);

}  // namespace tern::agent
