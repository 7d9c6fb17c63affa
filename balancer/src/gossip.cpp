#include "tern/balancer/gossip.hpp"

#include <algorithm>
#include <cstring>
#include <iterator>
#include <optional>
#include <tuple>

namespace tern::balancer {
namespace {

// A hint only: a shared vector's reference count sits just before it (make_shared), and merging,
// windows and expiry touch it; thousands of agents in one process (tern-sim) miss it in cache.
void PrefetchShared(const SharedLoad& load) {
  if (!Unowned(load)) __builtin_prefetch(reinterpret_cast<const char*>(load.get()) - 16);
}

}  // namespace

Gossip::Gossip(GossipOptions options) : options_(std::move(options)) {
  if (options_.window == 0) options_.window = 1;
  if (options_.view_max != 0) {
    options_.view_max = std::max(options_.view_max, options_.window);
    // A bounded view's lists at their full size now, one after the other in the heap: what a
    // merge reads is then one block after this object instead of wherever each list last grew
    // (tern-sim: thousands of agents, each cold in cache at its turn).
    top_.reserve(TopCapacity() + 1);
    slot_tags_.reserve(options_.view_max);
    slots_.reserve(options_.view_max);
    holes_.reserve(options_.view_max);
  }
}

Gossip::Entry Gossip::Make(SharedLoad load, std::uint64_t id, std::uint64_t seq, int jobs_running,
                           Millis born, bool dead, Millis dead_since, Millis news_since) {
  Entry entry;
  entry.load = std::move(load);
  entry.id = id;
  entry.seq = seq;
  entry.jobs_running = jobs_running;
  entry.born = born;
  entry.dead = dead;
  entry.dead_since = dead_since;
  entry.news_since = news_since;
  return entry;
}

std::string Gossip::SetLocal(LoadVector self, Millis now) {
  self.node_id = options_.self_id;
  std::string why = Implausible(self);
  const auto seq = self.seq;
  const auto jobs_running = self.jobs_running;
  self_ = Make(std::make_shared<const LoadVector>(std::move(self)), options_.self_id, seq,
               jobs_running, now, false, Millis{0}, Millis{0});
  self_checked_ = why.empty();
  return why;
}

std::string Gossip::SetLocalShared(SharedLoad self, Millis now) {
  std::string why = Implausible(*self);
  const auto seq = self->seq;
  const auto jobs_running = self->jobs_running;
  self_ =
      Make(std::move(self), options_.self_id, seq, jobs_running, now, false, Millis{0}, Millis{0});
  self_checked_ = why.empty();
  return why;
}

void Gossip::RefreshLocal(Millis now) {
  if (self_) self_->born = now;
}

void Gossip::Untop(std::uint32_t slot) {
  if (!top_.empty() && top_.back().slot == slot) {  // an evicted entry: the stalest
    top_.pop_back();
    return;
  }
  auto it =
      std::find_if(top_.begin(), top_.end(), [&](const Top& top) { return top.slot == slot; });
  if (it != top_.end()) top_.erase(it);
}

void Gossip::Rebuild() const {
  top_.clear();
  for (std::uint32_t slot = 0; slot < slots_.size(); ++slot) {
    const Entry& entry = slots_[slot];
    if (entry.id != 0 && !entry.dead) top_.push_back(MakeTop(slot));
  }
  const std::size_t keep = std::min(top_.size(), TopCapacity());
  top_all_ = keep == top_.size();
  std::partial_sort(top_.begin(), top_.begin() + static_cast<std::ptrdiff_t>(keep), top_.end(),
                    [this](const Top& a, const Top& b) { return Fresher(a, b); });
  top_.resize(keep);
}

void Gossip::Touch(std::uint32_t slot, bool known) {
  const Entry& entry = slots_[slot];
  if (known) Untop(slot);
  if (entry.dead) return;
  const Top top = MakeTop(slot);
  if (!top_all_ && top_.empty()) {
    Rebuild();
    return;
  }
  if (!top_all_ && Fresher(top_.back(), top)) return;  // older than every entry kept: stays out
  top_.insert(std::upper_bound(top_.begin(), top_.end(), top,
                               [this](const Top& a, const Top& b) { return Fresher(a, b); }),
              top);
  if (top_.size() > TopCapacity()) {
    top_.pop_back();
    top_all_ = false;
  }
}

std::optional<std::uint32_t> Gossip::Find(std::uint64_t id) const {
  if (options_.view_max == 0) {
    const auto* slot = index_.Find(id);
    if (!slot) return std::nullopt;
    return *slot;
  }
  if (id == 0) return std::nullopt;  // a hole's
  // The entry checks a tag's match: merging reads it anyway.
  for (auto slot = ScanTags(Tag(id), 0); slot < slot_tags_.size();
       slot = ScanTags(Tag(id), slot + 1)) {
    if (slots_[slot].id == id) return static_cast<std::uint32_t>(slot);
  }
  return std::nullopt;
}

std::size_t Gossip::ScanTags(std::uint32_t tag, std::size_t from) const {
  // Sixteen tags at a time with one branch for the sixteen (a vector compare where the target
  // has one): the scan is most of a window's merge.
  using Tags = std::uint32_t __attribute__((vector_size(16)));
  const Tags want = {tag, tag, tag, tag};
  const std::uint32_t* tags = slot_tags_.data();
  const std::size_t n = slot_tags_.size();
  std::size_t block = from;
  for (; block + 16 <= n; block += 16) {
    Tags a, b, c, d;
    std::memcpy(&a, tags + block, sizeof a);
    std::memcpy(&b, tags + block + 4, sizeof b);
    std::memcpy(&c, tags + block + 8, sizeof c);
    std::memcpy(&d, tags + block + 12, sizeof d);
    const Tags hit = (a == want) | (b == want) | (c == want) | (d == want);
    std::uint64_t halves[2];
    std::memcpy(halves, &hit, sizeof halves);
    if ((halves[0] | halves[1]) == 0) continue;
    for (std::size_t slot = block; slot < block + 16; ++slot) {
      if (tags[slot] == tag) return slot;
    }
  }
  for (std::size_t slot = block; slot < n; ++slot) {
    if (tags[slot] == tag) return slot;
  }
  return n;
}

bool Gossip::Spreading(std::uint32_t slot) const {
  const Entry& entry = slots_[slot];
  return entry.dead &&
         std::find(dead_news_.begin(), dead_news_.end(), entry.id) != dead_news_.end();
}

bool Gossip::FullOfLiveTop() const {
  const std::size_t held = slots_.size() - holes_.size();
  return options_.view_max != 0 && held >= options_.view_max && dead_held_ == 0 && top_all_ &&
         top_.size() == held;
}

bool Gossip::Stalest(Millis time, std::uint64_t id) const {
  return FullOfLiveTop() && Older(time, id, top_.back());
}

bool Gossip::MakeRoom(std::uint64_t id, const Entry& entry) {
  if (options_.view_max == 0 || slots_.size() - holes_.size() < options_.view_max) return true;
  const bool news = entry.dead;
  if (!news && FullOfLiveTop()) {
    // The stalest is top_'s last, with no scan: the same victim as the scan below.
    const Top& last = top_.back();
    if (Older(entry.key(), id, last)) return false;
    Remove(last.slot);
    return true;
  }
  // Otherwise (death notices held) the stalest by (key, id), the freshness order, by a scan of
  // the entries, sparing death notices still being spread. An expired entry awaiting the sweep
  // is among the stalest and goes first.
  auto stalest = [&](bool spare_news) {
    std::optional<std::uint32_t> found;
    Key worst{Millis::max(), 0};
    for (std::uint32_t slot = 0; slot < slots_.size(); ++slot) {
      const Key key = SlotKey(slot);
      if (key.first == kHoleKey || key >= worst) continue;
      if (spare_news && !dead_news_.empty() && Spreading(slot)) continue;
      found = slot;
      worst = key;
    }
    return std::pair{found, worst};
  };
  auto [victim, worst] = stalest(true);
  if (!victim) {
    if (!news) return false;  // every entry held is news still being spread
    std::tie(victim, worst) = stalest(false);
  }
  if (!news && Key{entry.key(), id} < worst) return false;  // the stalest itself: dropped
  Remove(*victim);
  return true;
}

void Gossip::Store(std::uint64_t id, Entry entry, std::optional<std::uint32_t> found) {
  const Millis key = entry.key();
  std::uint32_t slot;
  if (!found && !MakeRoom(id, entry)) return;
  if (entry.dead) ++dead_held_;
  if (found) {
    slot = *found;
    if (slots_[slot].dead) --dead_held_;
    Bury(std::move(slots_[slot].load));
    slots_[slot] = std::move(entry);
    SetKey(slot, Key{key, id});
    slot_tags_[slot] = Tag(id);
  } else if (!holes_.empty()) {
    slot = holes_.back();
    holes_.pop_back();
    if (options_.view_max == 0) index_.Insert(id, slot);
    slots_[slot] = std::move(entry);
    SetKey(slot, Key{key, id});
    slot_tags_[slot] = Tag(id);
  } else {
    slot = static_cast<std::uint32_t>(slots_.size());
    if (options_.view_max == 0) index_.Insert(id, slot);
    slots_.push_back(std::move(entry));
    if (options_.view_max == 0) slot_keys_.push_back(Key{key, id});
    slot_tags_.push_back(Tag(id));
  }
  next_sweep_ = std::min(next_sweep_, key + options_.max_age + SweepSlack());
  const Entry& stored = slots_[slot];
  auto news = std::find(dead_news_.begin(), dead_news_.end(), id);
  if (stored.dead && news == dead_news_.end()) dead_news_.push_back(id);
  if (!stored.dead && news != dead_news_.end()) dead_news_.erase(news);
  Touch(slot, found.has_value());
}

void Gossip::Remove(std::uint32_t slot) {
  // The entry, not slot_keys_: the merge has its line already (a hint loaded it).
  const auto id = slots_[slot].id;
  if (options_.view_max == 0) index_.Erase(id);
  // top_ holds only keys at or above its last one (the rest are all older): an expired entry is
  // seldom in it, and the search is then skipped.
  if (!top_.empty() && !Older(slots_[slot].key(), id, top_.back())) Untop(slot);
  if (!dead_news_.empty()) std::erase(dead_news_, id);
  if (slots_[slot].dead) --dead_held_;
  // A hole, not the last entry moved here: that would be one more index update (a cache miss
  // in tern-sim) and a stale slot in top_.
  Bury(std::move(slots_[slot].load));
  slots_[slot] = Entry{};
  SetKey(slot, Key{kHoleKey, 0});
  slot_tags_[slot] = Tag(0);
  holes_.push_back(slot);
}

std::vector<std::string> Gossip::OnReceive(std::uint64_t from,
                                           const std::vector<GossipEntry>& entries, Millis now) {
  if (entries.size() > kMaxEntries) {
    return {"window of " + std::to_string(entries.size()) + " entries from node " +
            std::to_string(from) + " (at most " + std::to_string(kMaxEntries) + ")"};
  }
  std::vector<std::string> rejected;
  for (const auto& entry : entries) {
    if (auto why = Implausible(entry.load); !why.empty()) {
      rejected.push_back("entry about node " + std::to_string(entry.load.node_id) + " from node " +
                         std::to_string(from) + ": " + why);
      continue;
    }
    SharedGossipEntry shared{std::make_shared<const LoadVector>(entry.load),
                             entry.load.node_id,
                             entry.load.seq,
                             entry.age,
                             entry.dead,
                             false,
                             entry.load.jobs_running};
    Merge(from, shared, now, rejected);
  }
  graveyard_.clear();
  return rejected;
}

std::vector<std::string> Gossip::OnReceiveShared(std::uint64_t from,
                                                 std::span<SharedGossipEntry> entries, Millis now) {
  std::vector<std::string> rejected;
  if (entries.size() > kMaxEntries) {
    rejected.push_back("window of " + std::to_string(entries.size()) + " entries from node " +
                       std::to_string(from) + " (at most " + std::to_string(kMaxEntries) + ")");
    return rejected;
  }
  // The window's lookups wait for their cache misses together: first the index cells, then the
  // slots they name (hints; the merge below looks everything up again).
  if (options_.view_max == 0) {
    for (const auto& incoming : entries) index_.Prefetch(incoming.node_id);
  }
  std::size_t fresh = 0;  // entries new to this agent: each fills a hole, if there is one
  for (const auto& incoming : entries) {
    if (options_.view_max != 0) break;  // the slots are few: PrefetchSlots() loaded them all
    if (const auto slot = Find(incoming.node_id)) {
      __builtin_prefetch(&slots_[*slot]);
      PrefetchShared(slots_[*slot].load);
    } else if (fresh < holes_.size()) {
      __builtin_prefetch(&slots_[holes_[holes_.size() - 1 - fresh++]]);
    }
  }
  for (auto& incoming : entries) {
    if (!incoming.load) {
      rejected.push_back("entry about node " + std::to_string(incoming.node_id) + " from node " +
                         std::to_string(from) + ": no load vector");
      continue;
    }
    // The sender's own vector is new; the others passed Implausible() when they entered the
    // sender's Gossip (only checked vectors are stored): check each vector once. The sender's
    // own was checked where it entered too when `checked` (the same check, not repeated).
    if (incoming.node_id == from && !incoming.checked) {
      if (auto why = Implausible(*incoming.load); !why.empty()) {
        rejected.push_back("entry about node " + std::to_string(incoming.node_id) + " from node " +
                           std::to_string(from) + ": " + why);
        continue;
      }
    }
    Merge(from, incoming, now, rejected);
  }
  // The vectors this window replaced, evicted or brought in vain, released together.
  for (auto& incoming : entries) Bury(std::move(incoming.load));
  graveyard_.clear();
  return rejected;
}

// `incoming` passed Implausible() where its vector entered (OnReceive, SetLocal).
void Gossip::Merge(std::uint64_t from, SharedGossipEntry& incoming, Millis now,
                   std::vector<std::string>& rejected) {
  const auto id = incoming.node_id;
  const auto seq = incoming.seq;
  if (incoming.age < Millis{0}) {
    rejected.push_back("entry about node " + std::to_string(id) + " from node " +
                       std::to_string(from) + ": age " + std::to_string(incoming.age.count()) +
                       " ms is in the future");
    return;
  }
  if (id == options_.self_id) return;
  if (incoming.age > options_.max_age) return;  // expired on the way: nothing to learn
  const Millis when = now - incoming.age;       // sampled, or for a notice, seen dead
  auto slot = Find(id);
  if (!slot && !incoming.dead && Stalest(when, id)) return;  // MakeRoom() would drop it
  if (!slot || Expired(slots_[*slot], now)) {  // an expired entry awaiting the sweep is gone
    Store(id,
          Make(std::move(incoming.load), id, seq, incoming.jobs_running, when, incoming.dead, when,
               now),
          slot);
    return;
  }
  Entry& known = slots_[*slot];
  if (incoming.dead) {
    if (!known.dead && known.born > when) return;  // sampled after the death: alive
    if (known.dead && seq <= known.seq) return;
    const bool newer = seq > known.seq;
    Entry updated = Make(newer ? std::move(incoming.load) : known.load, id, newer ? seq : known.seq,
                         newer ? incoming.jobs_running : known.jobs_running, known.born, true,
                         known.dead ? known.dead_since : when, known.dead ? known.news_since : now);
    Store(id, std::move(updated), slot);
  } else if (known.dead) {
    if (when <= known.dead_since || seq < known.seq) return;
    Store(id,
          Make(std::move(incoming.load), id, seq, incoming.jobs_running, when, false, Millis{0},
               Millis{0}),
          slot);  // it came back
  } else if (seq > known.seq) {
    Store(id,
          Make(std::move(incoming.load), id, seq, incoming.jobs_running, when, false, Millis{0},
               Millis{0}),
          slot);
  } else if (seq == known.seq && when > known.born) {
    // The same sample, a fresher copy: only its age changes.
    known.born = when;
    SetKey(*slot, Key{when, id});
    Touch(*slot, true);
  }
}

void Gossip::OnNodeDead(std::uint64_t node_id, Millis now) {
  auto slot = Find(node_id);
  if (!slot || slots_[*slot].dead || Expired(slots_[*slot], now)) return;
  Entry updated = slots_[*slot];
  updated.dead = true;
  updated.dead_since = now;
  updated.news_since = now;
  Store(node_id, std::move(updated), slot);
  graveyard_.clear();
}

void Gossip::OnNodeAlive(std::uint64_t node_id, Millis now) {
  auto slot = Find(node_id);
  if (!slot || !slots_[*slot].dead || Expired(slots_[*slot], now)) return;
  Entry updated = slots_[*slot];
  updated.dead = false;
  Store(node_id, std::move(updated), slot);
  graveyard_.clear();
}

void Gossip::Expire(Millis now) {
  // next_sweep_ is SweepSlack() after the oldest entry expires: most ticks skip the sweep, and
  // one sweep removes what expired over several ticks (expired entries count as absent
  // meanwhile: Expired()).
  if (now > next_sweep_) {
    // In stages, each waiting for its cache misses together (hints): the expired entries' slots,
    // then their index cells and vectors, then the removal.
    Millis oldest = Millis::max();
    expired_.clear();
    for (std::uint32_t slot = 0; slot < slots_.size(); ++slot) {
      const Millis key = SlotKey(slot).first;
      if (now - key > options_.max_age) {
        __builtin_prefetch(&slots_[slot]);
        expired_.push_back(static_cast<std::uint32_t>(slot));
      } else {
        oldest = std::min(oldest, key);  // a hole's is never the oldest
      }
    }
    for (const auto slot : expired_) {
      if (options_.view_max == 0) index_.Prefetch(slot_keys_[slot].second);
      PrefetchShared(slots_[slot].load);
    }
    for (const auto slot : expired_) Remove(slot);
    next_sweep_ =
        oldest == Millis::max() ? Millis::max() : oldest + options_.max_age + SweepSlack();
  }
  // Old news stops spreading; the entry itself stays (dead) until it expires.
  std::erase_if(dead_news_, [&](std::uint64_t id) {
    const auto slot = Find(id);
    return !slot || Expired(slots_[*slot], now) ||
           now - slots_[*slot].news_since >= options_.dead_news_for;
  });
}

SharedGossipEntry Gossip::ToWire(const Entry& entry, Millis now) const {
  return SharedGossipEntry{
      entry.load, entry.id, entry.seq,         std::max(Millis{0}, now - entry.key()),
      entry.dead, false,    entry.jobs_running};
}

std::vector<GossipSend> Gossip::Tick(Millis now, const std::vector<std::uint64_t>& candidates,
                                     std::mt19937_64& rng) {
  std::vector<GossipSend> sends;
  for (auto& shared : TickShared(now, candidates, rng)) {
    GossipSend send{shared.to, {}};
    send.entries.reserve(shared.entries.size());
    for (const auto& entry : shared.entries) {
      send.entries.push_back(GossipEntry{*entry.load, entry.age, entry.dead});
    }
    sends.push_back(std::move(send));
  }
  return sends;
}

std::vector<SharedGossipSend> Gossip::TickShared(Millis now,
                                                 const std::vector<std::uint64_t>& candidates,
                                                 std::mt19937_64& rng) {
  std::vector<SharedGossipSend> sends;
  TickShared(now, candidates, rng, sends);
  return sends;
}

void Gossip::TickShared(Millis now, const std::vector<std::uint64_t>& candidates,
                        std::mt19937_64& rng, std::vector<SharedGossipSend>& sends) {
  Expire(now);
  graveyard_.clear();
  if (candidates.empty()) {
    sends.clear();
    return;
  }
  // Distinct random peers without copying the candidate list: its size may be the cluster's.
  auto& peers = peers_;
  peers.clear();
  std::uniform_int_distribution<std::size_t> pick(0, candidates.size() - 1);
  for (std::size_t tries = 0; peers.size() < options_.fanout && tries < 4 * options_.fanout + 8;
       ++tries) {
    const auto peer = candidates[pick(rng)];
    if (peer == options_.self_id || std::find(peers.begin(), peers.end(), peer) != peers.end()) {
      continue;
    }
    peers.push_back(peer);
  }
  // Dead news, newest first.
  std::vector<std::pair<Millis, std::uint32_t>> news;
  for (auto id : dead_news_) {
    const auto slot = *Find(id);
    news.emplace_back(slots_[slot].news_since, slot);
  }
  std::sort(news.begin(), news.end(), std::greater<>());
  if (top_.size() < options_.window + 1 && !top_all_) Rebuild();
  // Hints: the window's index cells, then its vectors' reference counts, loaded together.
  const std::size_t hint = std::min(top_.size(), options_.window);
  for (std::size_t k = 0; k < hint; ++k) __builtin_prefetch(&slots_[top_[k].slot]);
  for (std::size_t k = 0; k < hint; ++k) PrefetchShared(slots_[top_[k].slot].load);
  sends.resize(peers.size());  // the windows' buffers are reused (tern-sim: no allocation)
  for (std::size_t p = 0; p < peers.size(); ++p) {
    const auto to = peers[p];
    sends[p].to = to;
    auto& window = sends[p].entries;
    window.clear();
    window.reserve(options_.window);
    if (self_) {
      window.push_back(ToWire(*self_, now));
      window.back().checked = self_checked_;
    }
    for (const auto& [since, slot] : news) {
      if (window.size() >= options_.window) break;
      if (slots_[slot].id != to) window.push_back(ToWire(slots_[slot], now));
    }
    for (const auto& [time, slot, rank] : top_) {
      if (window.size() >= options_.window || now - time > options_.max_age) break;
      if (slots_[slot].id == to) continue;  // the receiver knows its own load
      window.push_back(ToWire(slots_[slot], now));
    }
  }
}

std::vector<Gossip::ViewEntry> Gossip::View(Millis now) const {
  std::vector<ViewEntry> view;
  view.reserve(slots_.size() + 1);
  if (self_) view.push_back(ViewEntry{*self_->load, now - self_->born, false});
  const auto first_other = view.size();
  for (const auto& entry : slots_) {
    if (entry.id == 0 || now - entry.key() > options_.max_age) continue;
    view.push_back(ViewEntry{*entry.load, now - entry.born, entry.dead});
  }
  std::sort(view.begin() + static_cast<std::ptrdiff_t>(first_other), view.end(),
            [](const ViewEntry& a, const ViewEntry& b) { return a.load.node_id < b.load.node_id; });
  return view;
}

std::optional<Gossip::ViewEntry> Gossip::Get(std::uint64_t node_id, Millis now) const {
  if (node_id == options_.self_id) {
    if (!self_) return std::nullopt;
    return ViewEntry{*self_->load, now - self_->born, false};
  }
  const auto slot = Find(node_id);
  if (!slot || now - slots_[*slot].key() > options_.max_age) return std::nullopt;
  const Entry& entry = slots_[*slot];
  return ViewEntry{*entry.load, now - entry.born, entry.dead};
}

bool Gossip::VectorsMatch() const {
  if (self_ && (self_->load->node_id != self_->id || self_->load->seq != self_->seq)) return false;
  return std::all_of(slots_.begin(), slots_.end(), [](const Entry& entry) {
    return entry.id == 0 || (entry.load->node_id == entry.id && entry.load->seq == entry.seq &&
                             entry.load->jobs_running == entry.jobs_running);
  });
}

std::size_t Gossip::size() const { return slots_.size() - holes_.size() + (self_ ? 1 : 0); }

std::vector<Gossip::ViewEntry> Gossip::Freshest(Millis now, std::size_t n) const {
  std::vector<ViewEntry> out;
  out.reserve(n);
  VisitFreshest(now, n, [&](const LoadVector& load, Millis age) {
    out.push_back(ViewEntry{load, age, false});
  });
  return out;
}

std::vector<const Gossip::Entry*> Gossip::FreshestEntries(Millis now, std::size_t n) const {
  std::vector<const Entry*> out;
  out.reserve(std::min(n, slots_.size()));
  if (n > TopCapacity() || (top_.size() < n && !top_all_)) {
    Rebuild();
    if (n > TopCapacity()) {
      // More than the kept top: sort them all (rare; the balancer asks for a window's worth).
      std::vector<Key> all;
      for (const auto& entry : slots_) {
        if (entry.id != 0 && !entry.dead) all.emplace_back(entry.key(), entry.id);
      }
      std::sort(all.begin(), all.end(), std::greater<>());
      for (const auto& [key, id] : all) {
        if (out.size() >= n || now - key > options_.max_age) break;
        out.push_back(&slots_[*Find(id)]);
      }
      return out;
    }
  }
  for (const auto& [time, slot, rank] : top_) {
    if (out.size() >= n || now - time > options_.max_age) break;
    out.push_back(&slots_[slot]);
  }
  return out;
}

}  // namespace tern::balancer
