#include "tern/balancer/load_table.hpp"

#include <algorithm>

namespace tern::balancer {

bool LoadTable::Merge(const LoadVector& vector, Millis now) {
  auto found = entries_.find(vector.node_id);
  if (found != entries_.end() && found->second.vector.seq >= vector.seq) return false;
  entries_[vector.node_id] = Entry{vector, now};
  return true;
}

std::vector<LoadVector> LoadTable::GossipWindow(std::size_t n, Millis) const {
  std::vector<const Entry*> order;
  order.reserve(entries_.size());
  for (const auto& [id, entry] : entries_) order.push_back(&entry);
  std::stable_sort(order.begin(), order.end(),
                   [](const Entry* a, const Entry* b) { return a->refreshed > b->refreshed; });
  std::vector<LoadVector> window;
  for (std::size_t i = 0; i < order.size() && i < n; ++i) window.push_back(order[i]->vector);
  return window;
}

void LoadTable::Expire(Millis max_age, Millis now) {
  std::erase_if(entries_, [&](const auto& item) { return now - item.second.refreshed > max_age; });
}

std::optional<LoadVector> LoadTable::Get(std::uint64_t node_id) const {
  auto found = entries_.find(node_id);
  if (found == entries_.end()) return std::nullopt;
  return found->second.vector;
}

std::vector<LoadVector> LoadTable::All() const {
  std::vector<LoadVector> all;
  for (const auto& [id, entry] : entries_) all.push_back(entry.vector);
  return all;
}

}  // namespace tern::balancer
