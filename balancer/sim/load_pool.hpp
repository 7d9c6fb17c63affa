// LoadPool: the load vectors tern-sim's nodes publish, owned here instead of reference-counted.
// Gossips hold them through SharedLoads that own nothing (gossip.hpp), so that building a window,
// merging it and dropping an entry touch no reference count (in a process of thousands of agents,
// a cache miss on a line another agent wrote last, for every entry received).
//
// Contract: Take() gives a vector for a new sample (a reused one is reset to LoadVector{});
// Retire() takes back the one a node's new sample replaces, at the time it was replaced. A
// retired vector is reused only `retain` after that: choose it beyond the longest any Gossip may
// still hold it (Gossip::RetainsFor() counted from the vector's last sample time, plus a message's
// flight). Vectors are freed with the pool, never while a run goes on, so a late reader would
// read a reused vector, never freed memory; tern-sim checks the vectors it sends (cluster_sim.cpp).
//
// Thread-safety: not thread-safe; tern-sim keeps one per worker (the nodes it ticks).
#pragma once

#include <chrono>
#include <deque>
#include <memory>
#include <utility>

#include "tern/balancer/gossip.hpp"
#include "tern/balancer/load_vector.hpp"

namespace tern::sim {

class LoadPool {
 public:
  using Millis = std::chrono::milliseconds;

  explicit LoadPool(Millis retain) : retain_(retain) {}

  std::unique_ptr<balancer::LoadVector> Take(Millis now) {
    if (!retired_.empty() && now - retired_.front().first > retain_) {
      auto vector = std::move(retired_.front().second);
      retired_.pop_front();
      *vector = balancer::LoadVector{};
      return vector;
    }
    return std::make_unique<balancer::LoadVector>();
  }

  // Times of successive calls must not decrease (the simulation's clock).
  void Retire(std::unique_ptr<balancer::LoadVector> vector, Millis now) {
    if (vector) retired_.emplace_back(now, std::move(vector));
  }

  // A SharedLoad for `vector` that owns nothing: copies of it touch no reference count.
  static balancer::SharedLoad Unowned(const balancer::LoadVector* vector) {
    return balancer::SharedLoad(balancer::SharedLoad(), vector);
  }

 private:
  Millis retain_;
  std::deque<std::pair<Millis, std::unique_ptr<balancer::LoadVector>>> retired_;
};

}  // namespace tern::sim
