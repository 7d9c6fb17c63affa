// The reader's side of direct streams (docs/ipc.md "Direct streams"), without I/O: per writer,
// which sequence comes next, the messages that came early, and what was handed out. Messages
// of a writer come two ways, through the agents (in the order the writer sent them that way)
// and on a connection; this table hands them out strictly by sequence, each once.
//
//  - A writer is unknown until something through the agents tells where its numbering stands:
//    a sync (everything up to its sequence went before it) or a numbered message (everything
//    before it went before it, to this reader or an earlier one). Until then its messages from
//    a connection wait.
//  - A message at or below what was released, or already waiting, is a duplicate (a resend
//    after a broken connection) and is dropped.
//  - A message above the next one waits for the gap to fill (a resend through the agents).
//
// Thread-safety: none; one owner.
#pragma once

#include <algorithm>
#include <cstdint>
#include <map>
#include <optional>
#include <unordered_map>
#include <utility>

namespace tern::libtern {

template <typename T>
class StreamReorder {
 public:
  StreamReorder() = default;
  // Not copied: the cache of the last writer points into this object's own table.
  StreamReorder(const StreamReorder&) = delete;
  StreamReorder& operator=(const StreamReorder&) = delete;

  struct Progress {
    std::uint64_t received = 0;  // every message up to here was released
    std::uint64_t handed = 0;    // the last one handed out
  };

  // A message `sequence` of `writer`; `release(T&&)` takes each message that is now in order.
  template <typename Release>
  void Offer(std::uint64_t writer, std::uint64_t sequence, bool through_agents, T value,
             Release&& release) {
    Writer& w = Get(writer);
    if (!w.started) {
      if (!through_agents) {
        if (!w.waiting.try_emplace(sequence, std::move(value)).second) ++dropped_;
        return;
      }
      Start(w, sequence);
    }
    if (sequence < w.next || w.waiting.contains(sequence)) {
      ++dropped_;
      return;
    }
    if (sequence > w.next) {
      w.waiting.emplace(sequence, std::move(value));
      return;
    }
    release(std::move(value));
    ++w.next;
    Drain(w, release);
  }

  // A whole frame's messages `first`..`first + count - 1` of `writer` at once, when they are
  // exactly what comes next (the writer known, nothing waiting): true, and they count as
  // released (the caller hands them out in order); false otherwise (offer them one by one).
  // The common case of a direct stream, without a table operation per message.
  bool TakeRun(std::uint64_t writer, std::uint64_t first, std::uint32_t count) {
    Writer& w = Get(writer);
    if (!w.started || count == 0 || first != w.next || !w.waiting.empty()) return false;
    w.next += count;
    return true;
  }

  // A sync through the agents: everything of `writer` up to `sequence` went before it.
  template <typename Release>
  void Sync(std::uint64_t writer, std::uint64_t sequence, Release&& release) {
    Writer& w = Get(writer);
    if (!w.started) {
      Start(w, sequence + 1);
    } else if (w.next <= sequence) {
      // What is missing cannot come any more: release what waits up to the sync, in order.
      while (!w.waiting.empty() && w.waiting.begin()->first <= sequence) {
        release(std::move(w.waiting.begin()->second));
        w.waiting.erase(w.waiting.begin());
      }
      w.next = sequence + 1;
    }
    Drain(w, release);
  }

  void HandedOut(std::uint64_t writer, std::uint64_t sequence) {
    if (Writer* w = Find(writer)) w->handed = std::max(w->handed, sequence);
  }

  std::optional<Progress> progress(std::uint64_t writer) const {
    const Writer* w = Find(writer);
    if (w == nullptr) return std::nullopt;
    return Progress{w->started ? w->next - 1 : 0, w->handed};
  }

  // Messages waiting for an earlier one (or for their writer to be known).
  std::size_t waiting() const {
    std::size_t count = 0;
    for (const auto& [id, w] : writers_) count += w.waiting.size();
    return count;
  }
  std::uint64_t dropped() const { return dropped_; }

 private:
  struct Writer {
    bool started = false;
    std::uint64_t next = 1;  // the sequence to release next
    std::uint64_t handed = 0;
    std::map<std::uint64_t, T> waiting;
  };

  void Start(Writer& w, std::uint64_t next) {
    w.started = true;
    w.next = next;
    w.handed = std::max(w.handed, next - 1);
    while (!w.waiting.empty() && w.waiting.begin()->first < next) {
      w.waiting.erase(w.waiting.begin());
      ++dropped_;
    }
  }

  template <typename Release>
  void Drain(Writer& w, Release& release) {
    while (!w.waiting.empty() && w.waiting.begin()->first <= w.next) {
      auto node = w.waiting.extract(w.waiting.begin());
      if (node.key() < w.next) {
        ++dropped_;
        continue;
      }
      release(std::move(node.mapped()));
      ++w.next;
    }
  }

  // A stream has one writer nearly always, and every message looks it up three times (offered,
  // handed out, acknowledged): the one last offered is kept (writers are never removed, and an
  // unordered_map's elements stay where they are), so the other two lookups find it at once.
  Writer& Get(std::uint64_t writer) {
    if (last_ == nullptr || last_id_ != writer) {
      last_ = &writers_[writer];
      last_id_ = writer;
    }
    return *last_;
  }
  const Writer* Find(std::uint64_t writer) const {
    if (last_ != nullptr && last_id_ == writer) return last_;
    auto it = writers_.find(writer);
    return it == writers_.end() ? nullptr : &it->second;
  }
  Writer* Find(std::uint64_t writer) {
    return const_cast<Writer*>(std::as_const(*this).Find(writer));
  }

  std::unordered_map<std::uint64_t, Writer> writers_;
  Writer* last_ = nullptr;  // the writer last offered (Get), or none
  std::uint64_t last_id_ = 0;
  std::uint64_t dropped_ = 0;
};

}  // namespace tern::libtern
