// Gossip: MOSIX-style load dissemination whose cost per node does not grow with the cluster.
// Each tick an agent sends a bounded window of the freshest entries it knows (its own and
// others', each with its age) to `fanout` random live peers; entries age and expire; news of a
// dead node goes first. It does no I/O and reads no clock: the agent's Cluster drives it, and
// tern-sim runs thousands of them in one process.
//
// Contract:
//  - Per origin node the entry with the highest seq wins; an equal seq with a smaller age
//    refreshes the age. Entries whose age exceeds max_age are dropped (also by View/Tick).
//  - OnReceive drops implausible entries (Implausible() in load_vector.hpp), entries about self,
//    and windows longer than kMaxEntries, and returns one line per rejection for the log.
//  - Tick's windows hold at most `window` entries: death notices younger than dead_news_for
//    first, then the freshest entries, the own entry always.
//
// Thread-safety: not thread-safe; driven from one thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "tern/balancer/load_vector.hpp"

namespace tern::balancer {

struct GossipEntry {
  LoadVector load;                   // seq orders the vectors of one origin
  std::chrono::milliseconds age{0};  // how old `load` was when the message was sent
  bool dead = false;                 // death notice: the sender's membership saw it die
};

struct GossipSend {
  std::uint64_t to = 0;
  std::vector<GossipEntry> entries;
};

struct GossipOptions {
  std::uint64_t self_id = 0;
  std::size_t window = 16;  // entries per message (own entry always included)
  std::size_t fanout = 1;   // peers per tick
  std::chrono::milliseconds max_age{30000};
  std::chrono::milliseconds dead_news_for{10000};
};

class Gossip {
 public:
  using Millis = std::chrono::milliseconds;
  static constexpr std::size_t kMaxEntries = 64;

  explicit Gossip(GossipOptions options);

  void SetLocal(LoadVector self, Millis now);
  std::vector<std::string> OnReceive(std::uint64_t from, const std::vector<GossipEntry>& entries,
                                     Millis now);
  void OnNodeDead(std::uint64_t node_id, Millis now);
  void OnNodeAlive(std::uint64_t node_id, Millis now);
  std::vector<GossipSend> Tick(Millis now, const std::vector<std::uint64_t>& candidates,
                               std::mt19937_64& rng);

  struct ViewEntry {
    LoadVector load;
    Millis age{0};
    bool dead = false;
  };
  // Every known node, self first, then by node id.
  std::vector<ViewEntry> View(Millis now) const;
  std::optional<ViewEntry> Get(std::uint64_t node_id, Millis now) const;
  std::size_t size() const;

 private:
  struct Entry {
    LoadVector load;
    Millis born{0};  // now - age when received: the sample's time on this agent's clock
    bool dead = false;
    Millis dead_since{0};
  };
  GossipOptions options_;
  std::vector<Entry> entries_;  // implementation's choice; may change
};

}  // namespace tern::balancer
