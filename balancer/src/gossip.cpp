#include "tern/balancer/gossip.hpp"

#include <algorithm>
#include <iterator>

namespace tern::balancer {

Gossip::Gossip(GossipOptions options) : options_(std::move(options)) {
  if (options_.window == 0) options_.window = 1;
}

void Gossip::SetLocal(LoadVector self, Millis now) {
  self.node_id = options_.self_id;
  self_ = Entry{std::move(self), now, false, Millis{0}, Millis{0}};
}

void Gossip::Store(std::uint64_t id, Entry entry) {
  auto [it, inserted] = entries_.try_emplace(id);
  if (!inserted) {
    by_news_.erase({it->second.key(), id});
    if (it->second.dead) dead_news_.erase({it->second.news_since, id});
  }
  by_news_.insert({entry.key(), id});
  if (entry.dead) dead_news_.insert({entry.news_since, id});
  it->second = std::move(entry);
}

std::vector<std::string> Gossip::OnReceive(std::uint64_t from,
                                           const std::vector<GossipEntry>& entries, Millis now) {
  std::vector<std::string> rejected;
  if (entries.size() > kMaxEntries) {
    rejected.push_back("window of " + std::to_string(entries.size()) + " entries from node " +
                       std::to_string(from) + " (at most " + std::to_string(kMaxEntries) + ")");
    return rejected;
  }
  for (const auto& incoming : entries) {
    const auto id = incoming.load.node_id;
    if (auto why = Implausible(incoming.load); !why.empty()) {
      rejected.push_back("entry about node " + std::to_string(id) + " from node " +
                         std::to_string(from) + ": " + why);
      continue;
    }
    if (incoming.age < Millis{0}) {
      rejected.push_back("entry about node " + std::to_string(id) + " from node " +
                         std::to_string(from) + ": age " + std::to_string(incoming.age.count()) +
                         " ms is in the future");
      continue;
    }
    if (id == options_.self_id) continue;
    if (incoming.age > options_.max_age) continue;  // expired on the way: nothing to learn
    const Millis when = now - incoming.age;         // sampled, or for a notice, seen dead
    auto found = entries_.find(id);
    if (found == entries_.end()) {
      Store(id, Entry{incoming.load, when, incoming.dead, when, now});
      continue;
    }
    const Entry& known = found->second;
    Entry updated = known;
    if (incoming.dead) {
      if (!known.dead && known.born > when) continue;  // sampled after the death: alive
      if (incoming.load.seq > known.load.seq) updated.load = incoming.load;
      if (!known.dead) {
        updated.dead = true;
        updated.dead_since = when;
        updated.news_since = now;
      }
    } else if (known.dead) {
      if (when <= known.dead_since || incoming.load.seq < known.load.seq) continue;
      updated = Entry{incoming.load, when, false, Millis{0}, Millis{0}};  // it came back
    } else if (incoming.load.seq > known.load.seq) {
      updated.load = incoming.load;
      updated.born = when;
    } else if (incoming.load.seq == known.load.seq && when > known.born) {
      updated.born = when;  // the same sample, a fresher copy
    } else {
      continue;
    }
    Store(id, std::move(updated));
  }
  return rejected;
}

void Gossip::OnNodeDead(std::uint64_t node_id, Millis now) {
  auto found = entries_.find(node_id);
  if (found == entries_.end() || found->second.dead) return;
  Entry updated = found->second;
  updated.dead = true;
  updated.dead_since = now;
  updated.news_since = now;
  Store(node_id, std::move(updated));
}

void Gossip::OnNodeAlive(std::uint64_t node_id, Millis) {
  auto found = entries_.find(node_id);
  if (found == entries_.end() || !found->second.dead) return;
  Entry updated = found->second;
  updated.dead = false;
  Store(node_id, std::move(updated));
}

void Gossip::Expire(Millis now) {
  while (!by_news_.empty() && now - by_news_.begin()->first > options_.max_age) {
    const auto id = by_news_.begin()->second;
    auto found = entries_.find(id);
    if (found != entries_.end() && found->second.dead) {
      dead_news_.erase({found->second.news_since, id});
    }
    entries_.erase(id);
    by_news_.erase(by_news_.begin());
  }
  // Old news stops spreading; the entry itself stays (dead) until it expires.
  while (!dead_news_.empty() && now - dead_news_.begin()->first >= options_.dead_news_for) {
    dead_news_.erase(dead_news_.begin());
  }
}

GossipEntry Gossip::ToWire(const Entry& entry, Millis now) const {
  return GossipEntry{entry.load, std::max(Millis{0}, now - entry.key()), entry.dead};
}

std::vector<GossipSend> Gossip::Tick(Millis now, const std::vector<std::uint64_t>& candidates,
                                     std::mt19937_64& rng) {
  Expire(now);
  std::vector<GossipSend> sends;
  if (candidates.empty()) return sends;
  // Distinct random peers without copying the candidate list: its size may be the cluster's.
  std::vector<std::uint64_t> peers;
  std::uniform_int_distribution<std::size_t> pick(0, candidates.size() - 1);
  for (std::size_t tries = 0; peers.size() < options_.fanout && tries < 4 * options_.fanout + 8;
       ++tries) {
    const auto peer = candidates[pick(rng)];
    if (peer == options_.self_id || std::find(peers.begin(), peers.end(), peer) != peers.end()) {
      continue;
    }
    peers.push_back(peer);
  }
  for (const auto to : peers) {
    GossipSend send{to, {}};
    auto& window = send.entries;
    window.reserve(options_.window);
    if (self_) window.push_back(ToWire(*self_, now));
    for (auto it = dead_news_.rbegin(); it != dead_news_.rend() && window.size() < options_.window;
         ++it) {
      if (it->second != to) window.push_back(ToWire(entries_.at(it->second), now));
    }
    for (auto it = by_news_.rbegin(); it != by_news_.rend() && window.size() < options_.window;
         ++it) {
      const Entry& entry = entries_.at(it->second);
      // Dead entries travel only as news (above); the receiver already knows its own load.
      if (entry.dead || it->second == to) continue;
      window.push_back(ToWire(entry, now));
    }
    sends.push_back(std::move(send));
  }
  return sends;
}

std::vector<Gossip::ViewEntry> Gossip::View(Millis now) const {
  std::vector<ViewEntry> view;
  view.reserve(entries_.size() + 1);
  if (self_) view.push_back(ViewEntry{self_->load, now - self_->born, false});
  const auto first_other = view.size();
  for (const auto& [id, entry] : entries_) {
    if (now - entry.key() > options_.max_age) continue;
    view.push_back(ViewEntry{entry.load, now - entry.born, entry.dead});
  }
  std::sort(view.begin() + static_cast<std::ptrdiff_t>(first_other), view.end(),
            [](const ViewEntry& a, const ViewEntry& b) { return a.load.node_id < b.load.node_id; });
  return view;
}

std::optional<Gossip::ViewEntry> Gossip::Get(std::uint64_t node_id, Millis now) const {
  if (node_id == options_.self_id) {
    if (!self_) return std::nullopt;
    return ViewEntry{self_->load, now - self_->born, false};
  }
  auto found = entries_.find(node_id);
  if (found == entries_.end() || now - found->second.key() > options_.max_age) {
    return std::nullopt;
  }
  return ViewEntry{found->second.load, now - found->second.born, found->second.dead};
}

std::size_t Gossip::size() const { return entries_.size() + (self_ ? 1 : 0); }

std::vector<Gossip::ViewEntry> Gossip::Freshest(Millis now, std::size_t n) const {
  std::vector<ViewEntry> out;
  out.reserve(n);
  for (auto it = by_news_.rbegin(); it != by_news_.rend() && out.size() < n; ++it) {
    if (now - it->first > options_.max_age) break;
    const Entry& entry = entries_.at(it->second);
    if (entry.dead) continue;
    out.push_back(ViewEntry{entry.load, now - entry.born, false});
  }
  return out;
}

}  // namespace tern::balancer
