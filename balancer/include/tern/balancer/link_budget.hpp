// LinkBudget: which peer links an agent keeps open — at most `max_links`, others opened on
// demand (a migration, an IPC message, a forwarded API call, a gossip send) and closed once idle.
// No full mesh: the number of links per agent does not grow with the cluster.
//
// Contract: Tick() returns the links to close: those idle for `idle_after` while more than
// `max_links` are open, least recently used first, never one that is held (Hold/Release count:
// a migration in flight, pending API calls), and forgets them (the caller closes them; a later
// OnClosed for them is harmless). OnUse of a link not known counts it as open. Holds may come
// before the link opens.
//
// Thread-safety: not thread-safe; driven from one thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <vector>

namespace tern::balancer {

class LinkBudget {
 public:
  using Millis = std::chrono::milliseconds;
  LinkBudget(std::size_t max_links, Millis idle_after);

  void OnOpened(std::uint64_t node_id, Millis now);
  void OnClosed(std::uint64_t node_id);
  void OnUse(std::uint64_t node_id, Millis now);
  void Hold(std::uint64_t node_id);
  void Release(std::uint64_t node_id);
  std::vector<std::uint64_t> Tick(Millis now);
  std::size_t open() const { return links_.size(); }

 private:
  struct Link {
    Millis last_used{0};
  };
  std::size_t max_links_;
  Millis idle_after_;
  std::map<std::uint64_t, Link> links_;
  std::map<std::uint64_t, int> holds_;  // apart from links_: a hold may precede the link
};

}  // namespace tern::balancer
