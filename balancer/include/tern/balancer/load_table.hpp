// LoadTable: the gossip merge of load vectors — a recent, partial view of every node's load.
//
// Contract: per node it keeps the vector with the highest seq it has seen; older or duplicate
// vectors are ignored, so gossip may deliver entries late, twice or out of order. It remembers
// when each entry was last refreshed here, so that the freshest entries are the ones passed on
// (MOSIX's information dissemination) and stale ones can expire.
//
// Thread-safety: not thread-safe; the agent drives it from one thread. Time is passed in.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <vector>

#include "tern/balancer/load_vector.hpp"

namespace tern::balancer {

class LoadTable {
 public:
  using Millis = std::chrono::milliseconds;

  // Returns true when `vector` is newer than what the table held for its node.
  bool Merge(const LoadVector& vector, Millis now);
  // The `n` most recently refreshed entries, freshest first.
  std::vector<LoadVector> GossipWindow(std::size_t n, Millis now) const;
  // Drops entries not refreshed for longer than `max_age`.
  void Expire(Millis max_age, Millis now);
  std::optional<LoadVector> Get(std::uint64_t node_id) const;
  std::vector<LoadVector> All() const;
  std::size_t size() const { return entries_.size(); }

 private:
  struct Entry {
    LoadVector vector;
    Millis refreshed{0};
  };
  std::map<std::uint64_t, Entry> entries_;
};

}  // namespace tern::balancer
