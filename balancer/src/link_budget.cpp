#include "tern/balancer/link_budget.hpp"

#include <algorithm>

namespace tern::balancer {

LinkBudget::LinkBudget(std::size_t max_links, Millis idle_after)
    : max_links_(max_links), idle_after_(idle_after) {}

void LinkBudget::OnOpened(std::uint64_t node_id, Millis now) { OnUse(node_id, now); }

void LinkBudget::OnClosed(std::uint64_t node_id) { links_.erase(node_id); }

void LinkBudget::OnUse(std::uint64_t node_id, Millis now) {
  // A frame on a link we had not heard of means it is open: count it rather than lose track.
  auto& link = links_[node_id];
  link.last_used = std::max(link.last_used, now);
}

void LinkBudget::Hold(std::uint64_t node_id) { ++holds_[node_id]; }

void LinkBudget::Release(std::uint64_t node_id) {
  auto found = holds_.find(node_id);
  if (found == holds_.end()) return;
  if (--found->second <= 0) holds_.erase(found);
}

std::vector<std::uint64_t> LinkBudget::Tick(Millis now) {
  std::vector<std::uint64_t> close;
  if (links_.size() <= max_links_) return close;
  std::vector<std::pair<Millis, std::uint64_t>> idle;
  for (const auto& [id, link] : links_) {
    if (now - link.last_used >= idle_after_ && !holds_.contains(id)) {
      idle.emplace_back(link.last_used, id);
    }
  }
  std::sort(idle.begin(), idle.end());
  for (const auto& [last_used, id] : idle) {
    if (links_.size() <= max_links_) break;
    links_.erase(id);
    close.push_back(id);
  }
  return close;
}

}  // namespace tern::balancer
