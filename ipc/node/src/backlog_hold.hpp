// BacklogHold: when the agent stops reading its jobs' requests because a link to another node
// is backlogged, and when it reads them again.
//
// A job's requests to another node queue on that node's link. Jobs can write faster than a link
// drains; left alone the link's send queue fills, the link closes and everything on it fails.
// So the agent holds every job's requests back (the jobs' writes to their channels block) while
// some link has more than kHoldAbove waiting, until every link is at or under kResumeBelow.
// Holding is coarse on purpose: jobs that talk only on their own node wait too.
//
// A link that does not drain within kMaxHold of the hold's start (a peer that stopped reading,
// whose heartbeats have not closed the link yet) becomes *stuck*: it no longer holds anyone
// back, so its queue fills and the link closes as before holding existed, instead of this
// node's IPC stopping with it. A stuck link that drains to kResumeBelow counts again.
//
// Decisions only: the caller keeps the timer, the held channels and the log. It asks HoldNow()
// after a job's requests went out, and while holding() calls Check() every few milliseconds
// until it says resume. Without a backlog callback nothing is ever held.
//
// Thread-safety: none; used from the agent's io thread.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <set>
#include <utility>
#include <vector>

namespace tern::ipc {

class BacklogHold {
 public:
  using Clock = std::chrono::steady_clock;
  // Bytes waiting to be written on the link to `node`.
  using NodeBacklog = std::function<std::size_t(std::uint64_t node)>;

  static constexpr std::size_t kHoldAbove = 16u << 20;
  static constexpr std::size_t kResumeBelow = 4u << 20;  // at or under: drained
  static constexpr Clock::duration kMaxHold = std::chrono::seconds(2);

  explicit BacklogHold(NodeBacklog backlog) : backlog_(std::move(backlog)) {}

  // Whether jobs' requests are held back: from a HoldNow() that said so until a Check() that
  // says resume.
  bool holding() const { return holding_; }

  // After a job's requests went out, with the nodes that have a link: true when one link (not
  // stuck) has more than kHoldAbove waiting, and then the hold starts at `now`. While holding,
  // true without looking. Both calls look at every link (no early exit): each one unsticks the
  // stuck links that drained, and a check that gives up reports all the links that did not.
  template <typename Nodes>
  bool HoldNow(const Nodes& nodes, Clock::time_point now) {
    if (holding_) return true;
    if (!backlog_) return false;
    bool over = false;
    for (const std::uint64_t node : nodes) over |= Over(node, kHoldAbove, false, nullptr);
    if (over) {
      holding_ = true;
      started_ = now;
    }
    return over;
  }

  struct Verdict {
    bool resume = false;
    // Links that became stuck in this check (the caller warns about each).
    std::vector<std::uint64_t> newly_stuck;
  };
  // While holding: resume once every link not stuck is at or under kResumeBelow. From kMaxHold
  // after the hold started, the links still over it become stuck instead, and the hold ends.
  // Not holding: resume.
  template <typename Nodes>
  Verdict Check(const Nodes& nodes, Clock::time_point now) {
    Verdict verdict;
    if (holding_ && backlog_) {
      const bool give_up = now - started_ >= kMaxHold;
      bool over = false;
      for (const std::uint64_t node : nodes) {
        over |= Over(node, kResumeBelow, give_up, &verdict.newly_stuck);
      }
      if (over) return verdict;
    }
    holding_ = false;
    verdict.resume = true;
    return verdict;
  }

  // The link to `node` closed: a new one starts unstuck.
  void LinkClosed(std::uint64_t node) { stuck_.erase(node); }
  bool stuck(std::uint64_t node) const { return stuck_.contains(node); }

 private:
  // Whether `node`'s link holds jobs back at `limit`. A stuck link never does (and is unstuck
  // once drained); with `give_up`, a link over `limit` becomes stuck (added to `newly_stuck`).
  bool Over(std::uint64_t node, std::size_t limit, bool give_up,
            std::vector<std::uint64_t>* newly_stuck);

  NodeBacklog backlog_;
  bool holding_ = false;
  Clock::time_point started_;
  std::set<std::uint64_t> stuck_;  // links that did not drain within kMaxHold
};

// The keys of a map, iterated in place, for HoldNow/Check. std::views::keys would do, but
// clang 14 (the sanitizer and fuzzing build's compiler, deploy/fuzz) cannot compile libstdc++
// 12's <ranges> views.
template <typename Map>
class KeysOf {
 public:
  explicit KeysOf(const Map& map) : map_(map) {}
  class Iterator {
   public:
    explicit Iterator(typename Map::const_iterator it) : it_(it) {}
    const typename Map::key_type& operator*() const { return it_->first; }
    Iterator& operator++() {
      ++it_;
      return *this;
    }
    bool operator==(const Iterator&) const = default;

   private:
    typename Map::const_iterator it_;
  };
  Iterator begin() const { return Iterator(map_.begin()); }
  Iterator end() const { return Iterator(map_.end()); }

 private:
  const Map& map_;
};

}  // namespace tern::ipc
