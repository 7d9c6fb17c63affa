// Gossip: MOSIX-style load dissemination whose cost per node does not grow with the cluster.
// Each tick an agent sends a bounded window of the freshest entries it knows (its own and
// others', each with its age) to `fanout` random live peers; entries age and expire; news of a
// dead node goes first. It does no I/O and reads no clock: the agent's Cluster drives it, and
// tern-sim runs thousands of them in one process.
//
// Contract:
//  - Per origin node the entry with the highest seq wins; an equal seq with a smaller age
//    refreshes the age. Entries whose age exceeds max_age are dropped (also by View/Tick).
//  - OnReceive drops implausible entries (Implausible() in load_vector.hpp), entries with a
//    negative (future) age, and windows longer than kMaxEntries, and returns one line per
//    rejection for the log. Entries about self are ignored silently: the own entry coming back
//    is normal.
//  - A death notice (dead = true; its `age` is the time since the death was seen, not the load's
//    age) marks dead every entry about that node sampled before the death was seen; an entry
//    sampled after it (the node came back) clears it. Dead entries stay in View() (dead = true)
//    until max_age after the death, and each agent passes the news on, first in its windows,
//    for dead_news_for after it learned it.
//
// Thread-safety: not thread-safe; driven from one thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "tern/balancer/load_vector.hpp"

namespace tern::balancer {

struct GossipEntry {
  LoadVector load;  // seq orders the vectors of one origin
  // How old `load` was when the message was sent; for a death notice, how long ago the death
  // was seen (a receiver that has a sample of the node taken after that knows it is alive).
  std::chrono::milliseconds age{0};
  bool dead = false;  // death notice: the sender's membership saw it die
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

  // The `n` freshest live entries (self excluded), freshest first, in O(n): the bounded sample of
  // the cluster a Balancer decides on, as MOSIX decides on its load window.
  std::vector<ViewEntry> Freshest(Millis now, std::size_t n) const;
  const GossipOptions& options() const { return options_; }

 private:
  struct Entry {
    LoadVector load;
    Millis born{0};  // now - age when received: the sample's time on this agent's clock
    bool dead = false;
    Millis dead_since{0};  // when the death was seen, on this agent's clock
    Millis news_since{0};  // when this agent learned of it: it spreads the news from then on
    Millis key() const { return dead ? dead_since : born; }  // the time of the latest news
  };
  using Key = std::pair<Millis, std::uint64_t>;  // (key(), node id): the freshness order

  void Expire(Millis now);
  void Store(std::uint64_t id, Entry entry);
  GossipEntry ToWire(const Entry& entry, Millis now) const;

  GossipOptions options_;
  std::optional<Entry> self_;
  std::unordered_map<std::uint64_t, Entry> entries_;      // others, by node id
  std::set<Key> by_news_;                                 // the same entries, oldest news first
  std::set<std::pair<Millis, std::uint64_t>> dead_news_;  // (news_since, id) still spreading
};

}  // namespace tern::balancer
