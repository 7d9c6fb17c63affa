// The "ideal" row of tern-sim: the same jobs on the cluster taken as one machine. Every core of
// every node is in one pool that all jobs share equally (processor sharing over the pool: with n
// jobs, each runs at the summed speed of the min(n, cores) fastest cores over n), with perfect
// information and free, instant moves. No policy that places and moves jobs between nodes that
// share their cores equally among their jobs, without knowing how long a job will run, keeps the
// cluster's cores busier or its jobs more evenly served; it is the bound the other rows are read
// against (docs/balancer.md, "Simulator"). A policy that favoured young jobs over old ones (least
// attained service) could go below it; tern does not try to.
//
// Exact, event by event: all jobs in the pool have received the same service since they arrived,
// so a job ends when the pool's service counter reaches its arrival's value plus its work.
//
// Thread-safety: a plain function; each call is independent.
#pragma once

#include "cluster_sim.hpp"

namespace tern::sim {

SimResult RunPooled(const SimOptions& options);

}  // namespace tern::sim
