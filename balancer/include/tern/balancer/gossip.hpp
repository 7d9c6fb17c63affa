// Gossip: MOSIX-style load dissemination whose cost per node does not grow with the cluster.
// Each tick an agent sends a bounded window of the freshest entries it knows (its own and
// others', each with its age) to `fanout` random live peers; entries age and expire; news of a
// dead node goes first. It does no I/O and reads no clock: the agent's Cluster drives it, and
// tern-sim runs thousands of them in one process.
//
// Contract:
//  - Per origin node the entry with the highest seq wins; an equal seq with a smaller age
//    refreshes the age. Entries whose age exceeds max_age are dropped (also by View/Tick).
//  - With view_max > 0 the view holds at most view_max entries about other nodes (the own entry
//    comes on top): a new entry that would exceed it evicts the stalest one (by time of its
//    latest news, then node id), or is dropped when it is itself the stalest. The view is then
//    the view_max freshest entries an unbounded one would hold, so windows and Freshest() are
//    the same while view_max is above the window. A death notice still being spread is never
//    evicted, and a new one evicts the stalest entry even when it is older (its news must go
//    on); only when every entry held is such a notice does a new one replace the stalest of
//    them. view_max below `window` counts as `window`.
//  - OnReceive drops implausible entries (Implausible() in load_vector.hpp), entries with a
//    negative (future) age, and windows longer than kMaxEntries, and returns one line per
//    rejection for the log. Entries about self are ignored silently: the own entry coming back
//    is normal.
//  - A death notice (dead = true; its `age` is the time since the death was seen, not the load's
//    age) marks dead every entry about that node sampled before the death was seen; an entry
//    sampled after it (the node came back) clears it. Dead entries stay in View() (dead = true)
//    until max_age after the death, and each agent passes the news on, first in its windows,
//    for dead_news_for after it learned it.
//  - Stored load vectors are immutable and shared (SharedLoad): a window, a stored entry and
//    another agent's entry may all point at one vector. TickShared/OnReceiveShared pass them
//    without copying (tern-sim: thousands of agents in one process); Tick/OnReceive are the same
//    merge on values (the agent: windows go to and come from JSON). A vector is checked with
//    Implausible() once, where it enters: OnReceive checks each entry, SetLocal returns why its
//    own vector is implausible ("" when it is not; it is gossiped anyway, and value receivers
//    drop it). OnReceiveShared takes windows from another Gossip's TickShared: it checks the
//    sender's own entry with Implausible() unless the sender's SetLocal/SetLocalShared found it
//    plausible (SharedGossipEntry::checked: the same check on the same immutable vector, done
//    once where it entered instead of at every receiver), and the others' ages only (they passed
//    Implausible() when they entered the sender's Gossip; node_id, seq and jobs_running must be
//    the vector's, as TickShared makes them).
//  - A SharedLoad may also own nothing (std::shared_ptr's aliasing constructor on an empty one):
//    copying and dropping it then touches no reference count. The owner must keep the vector
//    while any Gossip may hold it: RetainsFor() past the last time its origin published or
//    refreshed it (SetLocalShared, RefreshLocal), more where windows take time to arrive without
//    aging (tern-sim: a step per hop; it waits twice that plus an interval, LoadPool).
//
// Thread-safety: not thread-safe; driven from one thread. Shared vectors are never modified, so
// two Gossips on two threads may hold the same ones.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "tern/balancer/id_index.hpp"
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

using SharedLoad = std::shared_ptr<const LoadVector>;

// Whether `load` has no reference count (null, or pointing at a vector it does not own): found
// without reading the count, which is a cache miss where vectors are many.
inline bool Unowned(const SharedLoad& load) {
  return !load.owner_before(SharedLoad()) && !SharedLoad().owner_before(load);
}

// GossipEntry with its load vector shared instead of copied (never null). node_id, seq and
// jobs_running repeat the vector's, so that a receiver decides, and tern-sim counts a window's
// bytes, without reading the vector (tern-sim: it is wherever its sender allocated it, a cache
// miss).
struct SharedGossipEntry {
  SharedLoad load;
  std::uint64_t node_id = 0;
  std::uint64_t seq = 0;
  std::chrono::milliseconds age{0};
  bool dead = false;
  // The sender's own entry, whose vector its SetLocal/SetLocalShared found plausible: receivers
  // need not read the vector to check it (tern-sim: it is a cache miss per window merged).
  bool checked = false;
  int jobs_running = 0;
};

struct SharedGossipSend {
  std::uint64_t to = 0;
  std::vector<SharedGossipEntry> entries;
};

struct GossipOptions {
  std::uint64_t self_id = 0;
  std::size_t window = 16;  // entries per message (own entry always included)
  std::size_t fanout = 1;   // peers per tick
  std::chrono::milliseconds max_age{30000};
  std::chrono::milliseconds dead_news_for{10000};
  // Entries about other nodes kept at most (0: no bound). Memory and merge cost per agent then
  // stay the same whatever the cluster's size; the Balancer reads only the freshest anyway.
  std::size_t view_max = 0;
};

// 64-byte aligned: what a merge reads is in the first four cache lines (Prefetch()).
class alignas(64) Gossip {
 public:
  using Millis = std::chrono::milliseconds;
  static constexpr std::size_t kMaxEntries = 64;

  explicit Gossip(GossipOptions options);

  std::string SetLocal(LoadVector self, Millis now);
  // SetLocal with a vector the caller allocated (it may own nothing: see the contract); its
  // node_id must be self_id.
  std::string SetLocalShared(SharedLoad self, Millis now);
  // The own sample is unchanged: it counts as taken at `now`, with the same vector and seq (an
  // equal seq with a smaller age refreshes receivers' copies without replacing them). tern-sim:
  // most simulated nodes do not change every interval. No-op before the first SetLocal.
  void RefreshLocal(Millis now);
  std::vector<std::string> OnReceive(std::uint64_t from, const std::vector<GossipEntry>& entries,
                                     Millis now);
  // Moves the load vectors out of `entries` (a delivered window is used once).
  std::vector<std::string> OnReceiveShared(std::uint64_t from, std::span<SharedGossipEntry> entries,
                                           Millis now);
  void OnNodeDead(std::uint64_t node_id, Millis now);
  void OnNodeAlive(std::uint64_t node_id, Millis now);
  std::vector<GossipSend> Tick(Millis now, const std::vector<std::uint64_t>& candidates,
                               std::mt19937_64& rng);
  // Tick with the windows' load vectors shared; the same peers and entries for the same rng.
  std::vector<SharedGossipSend> TickShared(Millis now, const std::vector<std::uint64_t>& candidates,
                                           std::mt19937_64& rng);
  // The same into `sends`, whose buffers it reuses: on return it holds one window per peer.
  void TickShared(Millis now, const std::vector<std::uint64_t>& candidates, std::mt19937_64& rng,
                  std::vector<SharedGossipSend>& sends);

  struct ViewEntry {
    LoadVector load;
    Millis age{0};
    bool dead = false;
  };
  // Every known node, self first, then by node id.
  std::vector<ViewEntry> View(Millis now) const;
  std::optional<ViewEntry> Get(std::uint64_t node_id, Millis now) const;
  // Entries held, self included; entries expired since the last sweep (at most max_age / 8 ago)
  // may still be counted until the next Tick.
  std::size_t size() const;
  // Whether every vector held still carries its entry's node_id, seq and jobs_running: always,
  // unless a vector owned elsewhere was reused while held (tern-sim checks its LoadPool with it).
  bool VectorsMatch() const;

  // The `n` freshest live entries (self excluded), freshest first, in O(n): the bounded sample of
  // the cluster a Balancer decides on, as MOSIX decides on its load window.
  std::vector<ViewEntry> Freshest(Millis now, std::size_t n) const;
  // Freshest without copies: calls visit(load, age) for each, freshest first. `hint_end`: how
  // much of each vector to load ahead (a hint; DecisionEnd: what NodeStateFromLoad reads).
  template <typename Visit>
  void VisitFreshest(Millis now, std::size_t n, Visit&& visit,
                     const char* (*hint_end)(const LoadVector&) = DecisionEnd) const {
    if (n > TopCapacity() || (top_.size() < n && !top_all_)) {
      const auto entries = FreshestEntries(now, n);
      for (const auto* entry : entries) PrefetchLoad(entry->load.get(), hint_end);
      for (const auto* entry : entries) visit(*entry->load, now - entry->born);
      return;
    }
    // The common case, as FreshestEntries() walks it, without a list (tern-sim: millions).
    std::size_t count = 0;
    while (count < n && count < top_.size() && now - top_[count].time <= options_.max_age) {
      ++count;
    }
    // Hint: the vectors are wherever their senders put them; load them together.
    for (std::size_t k = 0; k < count; ++k) PrefetchLoad(slots_[top_[k].slot].load.get(), hint_end);
    for (std::size_t k = 0; k < count; ++k) {
      const Entry& entry = slots_[top_[k].slot];
      visit(*entry.load, now - entry.born);
    }
  }
  const GossipOptions& options() const { return options_; }
  // How long after its sample time (the last SetLocal or RefreshLocal of its origin) this Gossip
  // may still hold a vector: an expired entry goes at the first Tick more than this after it.
  // Holding it until then is what lets a window still carry it. For a death notice, count from
  // the death instead.
  Millis RetainsFor() const { return options_.max_age + SweepSlack(); }

  // Hints only, no effect on results (tern-sim: thousands of agents in one process, each cold in
  // cache when its turn comes). Each stage reads what the one before loaded: called for agents
  // some turns ahead (Prefetch() furthest, then the others in the order below), the misses of
  // several agents overlap instead of coming one after another.
  //  - Prefetch(): this object (but for what only the expiry sweep reads).
  //  - Before OnReceiveShared: PrefetchWindow() the index cells (or tags) of the window's
  //    entries, the freshest list and the sender's own vector (`from`), PrefetchSlots() the
  //    entries they name, the holes new ones will fill and the entries they will evict.
  //  - Before TickShared: PrefetchTick() the freshest list (and the keys the expiry sweep reads
  //    when it is due), PrefetchTickSlots() its entries.
  //  - Before VisitFreshest: PrefetchTick(), PrefetchTickSlots(), then PrefetchLoads() the load
  //    vectors of the freshest entries.
  void Prefetch() const {
    // What merging and ticking read: up to the packed keys (only the sweep reads them, seldom).
    // No member is read here: that would wait for the line this loads.
    const auto* self = reinterpret_cast<const char*>(this);
    const auto* end = reinterpret_cast<const char*>(&slot_keys_);
    for (const char* line = self; line < end; line += 64) __builtin_prefetch(line);
  }
  void PrefetchWindow(std::span<const SharedGossipEntry> entries, std::uint64_t from = 0) const {
    for (const auto& entry : entries) {  // the sender's own vector, which OnReceiveShared checks
      if (entry.node_id != from || !entry.load) continue;
      if (!entry.checked) PrefetchLoad(entry.load.get(), CheckedEnd);
      break;
    }
    if (options_.view_max == 0) {
      for (const auto& entry : entries) index_.Prefetch(entry.node_id);
    }
    const auto* top = reinterpret_cast<const char*>(top_.data());
    for (std::size_t byte = 0; byte < top_.size() * sizeof(Top); byte += 64) {
      __builtin_prefetch(top + byte);
    }
    if (!holes_.empty()) __builtin_prefetch(&holes_.back());
    if (options_.view_max != 0) {  // Find() scans the tags (merging only writes the keys)
      const auto* tags = reinterpret_cast<const char*>(slot_tags_.data());
      for (std::size_t byte = 0; byte < slot_tags_.size() * sizeof(std::uint32_t); byte += 64) {
        __builtin_prefetch(tags + byte);
      }
    }
  }
  void PrefetchSlots(std::span<const SharedGossipEntry> entries) const {
    // The slots the merge will touch: those of the entries known, then for the new ones the holes
    // they fill and, in a full bounded view, the stalest entries they evict (top_'s last).
    std::size_t fresh = 0;
    for (const auto& entry : entries) {
      // With view_max, a tag's match only (checking the id would wait for the entry's line).
      const auto slot = options_.view_max == 0
                            ? Find(entry.node_id)
                            : std::optional<std::uint32_t>(ScanTags(Tag(entry.node_id), 0));
      if (slot && *slot < slots_.size()) {
        __builtin_prefetch(&slots_[*slot]);
      } else if (fresh < holes_.size()) {
        __builtin_prefetch(&slots_[holes_[holes_.size() - 1 - fresh++]]);
      } else if (options_.view_max != 0 && fresh - holes_.size() < top_.size()) {
        __builtin_prefetch(&slots_[top_[top_.size() - 1 - (fresh++ - holes_.size())].slot]);
      }
    }
  }
  void PrefetchTick(Millis now) const {
    const std::size_t n = std::min(top_.size(), options_.window);
    const auto* first = reinterpret_cast<const char*>(top_.data());
    for (std::size_t byte = 0; byte < n * sizeof(Top); byte += 64) __builtin_prefetch(first + byte);
    if (now > next_sweep_) {  // what the sweep reads: the keys, or with view_max the entries
      const auto* keys = options_.view_max == 0 ? reinterpret_cast<const char*>(slot_keys_.data())
                                                : reinterpret_cast<const char*>(slots_.data());
      const std::size_t bytes =
          options_.view_max == 0 ? slot_keys_.size() * sizeof(Key) : slots_.size() * sizeof(Entry);
      for (std::size_t byte = 0; byte < bytes; byte += 64) __builtin_prefetch(keys + byte);
    }
  }
  // A vector's lines up to `end` (DecisionEnd or CheckedEnd, load_vector.hpp).
  static void PrefetchLoad(const LoadVector* load, const char* (*end)(const LoadVector&)) {
    if (load == nullptr) return;
    const auto* first = reinterpret_cast<const char*>(load);
    for (const char* line = first; line < end(*load); line += 64) __builtin_prefetch(line);
  }
  void PrefetchTickSlots() const {
    const std::size_t n = std::min(top_.size(), options_.window);
    for (std::size_t k = 0; k < n; ++k) __builtin_prefetch(&slots_[top_[k].slot]);
  }
  void PrefetchLoads(const char* (*end)(const LoadVector&) = DecisionEnd) const {
    const std::size_t n = std::min(top_.size(), options_.window);
    for (std::size_t k = 0; k < n; ++k) PrefetchLoad(slots_[top_[k].slot].load.get(), end);
  }

 private:
  struct Entry {
    SharedLoad load;
    std::uint64_t id = 0;   // load->node_id and load->seq, kept here: merging reads only the
    std::uint64_t seq = 0;  // entry, not the vector (which is wherever its sender put it)
    Millis born{0};         // now - age when received: the sample's time on this agent's clock
    bool dead = false;
    int jobs_running = 0;  // load->jobs_running, for windows (SharedGossipEntry)
    Millis dead_since{0};  // when the death was seen, on this agent's clock
    Millis news_since{0};  // when this agent learned of it: it spreads the news from then on
    Millis key() const { return dead ? dead_since : born; }  // the time of the latest news
  };
  using Key = std::pair<Millis, std::uint64_t>;  // (key(), node id): the freshness order
  // An entry of top_: where it is, so that windows and Freshest() skip the index (an entry
  // stays in its slot until it is removed).
  // 16 bytes, not a whole Key: the list is read (and shifted) at every window merged and sent.
  // Entries of the same time are ordered by id through `rank`, the id itself while it fits in
  // 32 bits (tern-sim: samples are taken on 200 ms steps, so ties are common, and reading the
  // entries' ids was a cache miss per comparison); larger ids compare the entries' ids.
  struct Top {
    Millis time{0};  // slots_[slot].key()
    std::uint32_t slot = 0;
    std::uint32_t rank = 0;  // Rank(slots_[slot].id)
  };
  static constexpr std::uint32_t kFarRank = 0xffffffff;
  static std::uint32_t Rank(std::uint64_t id) {
    return id < kFarRank ? static_cast<std::uint32_t>(id) : kFarRank;
  }
  Top MakeTop(std::uint32_t slot) const {
    return Top{slots_[slot].key(), slot, Rank(slots_[slot].id)};
  }
  // Whether (time, id) comes after `top` in the freshness order (older, or as old with a smaller
  // id): Key{time, id} < Key{top.time, slots_[top.slot].id}.
  bool Older(Millis time, std::uint64_t id, const Top& top) const {
    if (time != top.time) return time < top.time;
    const auto rank = Rank(id);
    if (rank != top.rank || rank != kFarRank) return rank < top.rank;
    return id < slots_[top.slot].id;
  }
  bool Fresher(const Top& a, const Top& b) const {
    if (a.time != b.time) return a.time > b.time;
    if (a.rank != b.rank || a.rank != kFarRank) return a.rank > b.rank;
    return slots_[a.slot].id > slots_[b.slot].id;
  }

  static Entry Make(SharedLoad load, std::uint64_t id, std::uint64_t seq, int jobs_running,
                    Millis born, bool dead, Millis dead_since, Millis news_since);
  void Merge(std::uint64_t from, SharedGossipEntry& incoming, Millis now,
             std::vector<std::string>& rejected);
  std::vector<const Entry*> FreshestEntries(Millis now, std::size_t n) const;
  void Expire(Millis now);
  // `found`: the slot holding `id` (Find), if any.
  void Store(std::uint64_t id, Entry entry, std::optional<std::uint32_t> found);
  // view_max: makes room for a new entry about `id` (evicts the stalest), or returns false
  // when the entry is to be dropped.
  bool MakeRoom(std::uint64_t id, const Entry& entry);
  // Whether the view is full (view_max) of live entries, all in top_ (view_max is at most about
  // top_'s capacity): the stalest is then top_.back(), found without a scan (MakeRoom, Stalest).
  bool FullOfLiveTop() const;
  // Whether a live entry about `id` (not held) sampled at `time` is one MakeRoom() drops on its
  // fast path: FullOfLiveTop() and it is older than the stalest.
  // Merge() then skips building the entry (at 10,000 nodes in tern-sim, ~45% of those received).
  bool Stalest(Millis time, std::uint64_t id) const;
  bool Spreading(std::uint32_t slot) const;
  // The slot holding `id`: through index_, or with view_max, a scan of the packed keys (a few
  // lines, fewer misses than a hash table of its own).
  std::optional<std::uint32_t> Find(std::uint64_t id) const;
  // The first slot at or after `from` whose tag is `tag` (its id may still differ), or the
  // number of slots.
  std::size_t ScanTags(std::uint32_t tag, std::size_t from) const;
  // Keeps a released vector until the end of the call, its reference count loaded meanwhile
  // (a hint: tern-sim's vectors are cold in cache; the releases' misses then overlap).
  void Bury(SharedLoad&& load) {
    if (Unowned(load)) {  // no count to release
      load.reset();
      return;
    }
    __builtin_prefetch(reinterpret_cast<const char*>(load.get()) - 16);
    graveyard_.push_back(std::move(load));
  }
  void Remove(std::uint32_t slot);
  // Keeps top_ the freshest live entries; `known`: the entry may already be in top_.
  void Touch(std::uint32_t slot, bool known);
  void Untop(std::uint32_t slot);
  void Rebuild() const;
  SharedGossipEntry ToWire(const Entry& entry, Millis now) const;
  std::size_t TopCapacity() const { return 2 * options_.window + 4; }
  bool Expired(const Entry& entry, Millis now) const {
    return now - entry.key() > options_.max_age;
  }
  // How late the expiry sweep may run: expired entries wait for it, counted as absent.
  Millis SweepSlack() const { return options_.max_age / 8; }
  // slot_keys_ of a hole: never expires, never the oldest.
  static constexpr Millis kHoleKey = Millis::max();

  // What merging a window and ticking read comes first (Prefetch() loads up to slot_keys_):
  // tern-sim's agents are cold in cache when their turn comes.
  GossipOptions options_;
  // Others' entries in a flat vector, found by id. A removed entry leaves a hole (id 0, key
  // kHoleKey) that the next new entry fills: nothing moves, so top_ and the index stay valid.
  std::vector<Entry> slots_;
  // The low 32 bits of each slot's id (0 for a hole), packed: what Find() scans.
  std::vector<std::uint32_t> slot_tags_;
  static std::uint32_t Tag(std::uint64_t id) { return static_cast<std::uint32_t>(id); }
  std::vector<std::uint32_t> holes_;
  // The freshest live entries, freshest first: the windows and Freshest() read only these.
  // When top_all_ is false, entries not in top_ are all older than top_.back().
  mutable std::vector<Top> top_;
  mutable bool top_all_ = true;
  bool self_checked_ = false;             // Implausible(*self_->load) was "" (SetLocal*)
  std::size_t dead_held_ = 0;             // entries held with dead = true
  std::vector<std::uint64_t> dead_news_;  // nodes whose death this agent still spreads
  std::vector<SharedLoad> graveyard_;     // Bury(); empty between calls
  Millis next_sweep_{0};
  // Up to here, what merging a window reads (the first four cache lines); ticking also reads
  // the two below.
  std::optional<Entry> self_;
  std::vector<std::uint64_t> peers_;  // TickShared's, kept for its capacity
  IdIndex index_;                     // unused with view_max
  // (slots_[i].key(), id), packed: the expiry sweep reads only these. Not kept with view_max:
  // the view is a few dozen entries, the sweep seldom runs (the stalest are evicted first), and
  // writing the keys was one more cache line per entry merged (tern-sim).
  std::vector<Key> slot_keys_;
  Key SlotKey(std::uint32_t slot) const {
    if (options_.view_max == 0) return slot_keys_[slot];
    const Entry& entry = slots_[slot];
    return entry.id == 0 ? Key{kHoleKey, 0} : Key{entry.key(), entry.id};
  }
  void SetKey(std::uint32_t slot, Key key) {
    if (options_.view_max == 0) slot_keys_[slot] = key;
  }
  std::vector<std::uint32_t> expired_;  // the sweep's list, kept for its capacity
};

}  // namespace tern::balancer
