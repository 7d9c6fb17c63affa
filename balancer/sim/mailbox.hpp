// Mailbox: the gossip windows sent to each simulated node, kept until the node next reads its
// view (its tick, a sample for a placement or a decision, a view sampled for the report), and
// merged then, in the order sent, each at the time it arrived. A Gossip's state after a merge
// depends only on its state before, the window and the arrival time, never on when the call is
// made, so a window merged late but before any read gives every read the same view as merging
// it on arrival; each node is then touched once per interval (its tick, which also merges) where
// it was touched twice (docs/balancer.md, "Simulator").
//
// Windows are posted in generations, one per step: a step's windows are written by the workers
// into their part's buffer of the step's generation (Entries), then posted in order (Post). A
// generation's buffers are reused `generations` steps later (BeginStep): any node that still has
// mail in it is merged first (a callback), so a small ring costs a merge at another time, never a
// different result.
//
// Thread-safety: BeginStep and Post from one thread while no other uses the Mailbox; between
// them, Entries(part) by part's thread only, and Deliver/hints for a node by the thread that owns
// the node in that pass.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <span>
#include <vector>

#include "tern/balancer/gossip.hpp"

namespace tern::sim {

class Mailbox {
 public:
  using Millis = std::chrono::milliseconds;
  static constexpr std::size_t kMaxGenerations = 16;

  Mailbox(std::size_t nodes, std::size_t parts, std::size_t generations)
      : generations_(std::clamp<std::size_t>(generations, 2, kMaxGenerations)),
        head_(nodes, kNone),
        tail_(nodes, kNone),
        messages_(generations_),
        entries_(generations_ * parts),
        parts_(parts) {}

  // Starts step `step` (0, 1, ...): its windows go to generation step % generations. Mail still
  // waiting in that generation is merged first: merge(node) must Deliver all of node's mail.
  template <typename Merge>
  void BeginStep(std::uint64_t step, Merge&& merge) {
    current_ = static_cast<std::uint32_t>(step % generations_);
    for (const auto& message : messages_[current_]) {
      const std::uint32_t head = head_[message.to];
      if (head != kNone && (head & kGenMask) == current_) merge(message.to);
    }
    messages_[current_].clear();
    for (std::size_t part = 0; part < parts_; ++part) Buffer(current_, part).clear();
  }

  // Where part's thread writes the windows it sends during this step.
  std::vector<balancer::SharedGossipEntry>& Entries(std::size_t part) {
    return Buffer(current_, part);
  }

  // A window for `to` from node id `from`: Entries(part)[begin, begin + count), arriving at
  // `arrive` (not before any earlier post to `to`).
  void Post(std::uint32_t to, std::uint64_t from, std::uint32_t part, std::uint32_t begin,
            std::uint32_t count, Millis arrive) {
    auto& list = messages_[current_];
    const auto index = static_cast<std::uint32_t>(list.size() << kGenBits) | current_;
    list.push_back(Message{from, arrive, to, part, begin, count, kNone});
    if (tail_[to] == kNone) {
      head_[to] = index;
    } else {
      At(tail_[to]).next = index;
    }
    tail_[to] = index;
  }

  bool Empty(std::uint32_t node) const { return head_[node] == kNone; }

  // Calls merge(from, entries, arrive) for node's windows that arrived at `upto` or before, in
  // the order posted, and forgets them.
  template <typename Merge>
  void Deliver(std::uint32_t node, Millis upto, Merge&& merge) {
    std::uint32_t index = head_[node];
    while (index != kNone) {
      Message& message = At(index);
      if (message.arrive > upto) break;
      if (message.next != kNone) PrefetchEntries(message.next);
      merge(message.from, Window(index), message.arrive);
      index = message.next;
    }
    head_[node] = index;
    if (index == kNone) tail_[node] = kNone;
  }

  // Hints for node's first waiting window, in stages a few nodes ahead: PrefetchHead() its
  // record, PrefetchWindow() (which reads the record) its entries; First() then names them for
  // Gossip's hints (empty when there is no mail).
  void PrefetchHead(std::uint32_t node) const {
    if (head_[node] != kNone) __builtin_prefetch(&At(head_[node]));
  }
  void PrefetchWindow(std::uint32_t node) const {
    if (head_[node] != kNone) PrefetchEntries(head_[node]);
  }
  std::span<const balancer::SharedGossipEntry> First(std::uint32_t node,
                                                     std::uint64_t& from) const {
    if (head_[node] == kNone) return {};
    from = At(head_[node]).from;
    return Window(head_[node]);
  }

 private:
  static constexpr std::uint32_t kNone = 0xffffffff;
  static constexpr std::uint32_t kGenBits = 4;  // 1 << kGenBits >= kMaxGenerations
  static constexpr std::uint32_t kGenMask = (1u << kGenBits) - 1;

  struct Message {
    std::uint64_t from = 0;
    Millis arrive{0};
    std::uint32_t to = 0;
    std::uint32_t part = 0;
    std::uint32_t begin = 0;
    std::uint32_t count = 0;
    std::uint32_t next = kNone;  // the next window to the same node
  };

  Message& At(std::uint32_t index) { return messages_[index & kGenMask][index >> kGenBits]; }
  const Message& At(std::uint32_t index) const {
    return messages_[index & kGenMask][index >> kGenBits];
  }
  std::vector<balancer::SharedGossipEntry>& Buffer(std::uint32_t generation, std::size_t part) {
    return entries_[generation * parts_ + part];
  }
  const std::vector<balancer::SharedGossipEntry>& Buffer(std::uint32_t generation,
                                                         std::size_t part) const {
    return entries_[generation * parts_ + part];
  }
  std::span<balancer::SharedGossipEntry> Window(std::uint32_t index) {
    const Message& message = At(index);
    return std::span<balancer::SharedGossipEntry>(Buffer(index & kGenMask, message.part))
        .subspan(message.begin, message.count);
  }
  std::span<const balancer::SharedGossipEntry> Window(std::uint32_t index) const {
    const Message& message = At(index);
    return std::span<const balancer::SharedGossipEntry>(Buffer(index & kGenMask, message.part))
        .subspan(message.begin, message.count);
  }
  void PrefetchEntries(std::uint32_t index) const {
    const auto window = Window(index);
    const auto begin = reinterpret_cast<std::uintptr_t>(window.data()) & ~std::uintptr_t{63};
    const auto end = reinterpret_cast<std::uintptr_t>(window.data()) + window.size_bytes();
    for (auto line = begin; line < end; line += 64) {
      __builtin_prefetch(reinterpret_cast<const void*>(line));
    }
  }

  std::size_t generations_;
  std::uint32_t current_ = 0;
  std::vector<std::uint32_t> head_, tail_;      // per node: its oldest and newest waiting window
  std::vector<std::vector<Message>> messages_;  // per generation
  std::vector<std::vector<balancer::SharedGossipEntry>> entries_;  // per generation and part
  std::size_t parts_;
};

}  // namespace tern::sim
