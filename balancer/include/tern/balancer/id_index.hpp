// IdIndex: node id -> slot number, an open-addressing hash table (linear probing, backward-shift
// deletion) with one cache miss per lookup. Gossip keeps its entries in a flat vector and finds
// them through this: tern-sim runs thousands of agents, each merging a window every second.
//
// Contract: id 0 is not a valid key (no node has it). Find returns nullptr when absent.
//
// Thread-safety: not thread-safe.
#pragma once

#include <cstdint>
#include <vector>

namespace tern::balancer {

class IdIndex {
 public:
  std::uint32_t* Find(std::uint64_t id) {
    if (keys_.empty() || id == 0) return nullptr;
    for (std::size_t i = Home(id);; i = (i + 1) & mask_) {
      if (keys_[i] == id) return &values_[i];
      if (keys_[i] == 0) return nullptr;
    }
  }
  const std::uint32_t* Find(std::uint64_t id) const { return const_cast<IdIndex*>(this)->Find(id); }
  void Insert(std::uint64_t id, std::uint32_t value) {
    if ((size_ + 1) * 2 > keys_.size()) Grow();
    std::size_t i = Home(id);
    while (keys_[i] != 0 && keys_[i] != id) i = (i + 1) & mask_;
    if (keys_[i] == 0) ++size_;
    keys_[i] = id;
    values_[i] = value;
  }
  void Erase(std::uint64_t id) {
    if (keys_.empty()) return;
    std::size_t i = Home(id);
    while (keys_[i] != id) {
      if (keys_[i] == 0) return;
      i = (i + 1) & mask_;
    }
    // Shift back the entries after the hole that probed past it.
    for (std::size_t j = (i + 1) & mask_; keys_[j] != 0; j = (j + 1) & mask_) {
      const std::size_t home = Home(keys_[j]);
      const bool between = i <= j ? (i < home && home <= j) : (i < home || home <= j);
      if (between) continue;
      keys_[i] = keys_[j];
      values_[i] = values_[j];
      i = j;
    }
    keys_[i] = 0;
    --size_;
  }
  std::size_t size() const { return size_; }

 private:
  std::size_t Home(std::uint64_t id) const {
    return static_cast<std::size_t>((id * 0x9e3779b97f4a7c15ull) >> 20) & mask_;
  }
  void Grow() {
    std::vector<std::uint64_t> keys = std::move(keys_);
    std::vector<std::uint32_t> values = std::move(values_);
    const std::size_t capacity = keys.empty() ? 64 : keys.size() * 2;
    keys_.assign(capacity, 0);
    values_.assign(capacity, 0);
    mask_ = capacity - 1;
    size_ = 0;
    for (std::size_t i = 0; i < keys.size(); ++i) {
      if (keys[i] != 0) Insert(keys[i], values[i]);
    }
  }
  std::vector<std::uint64_t> keys_;
  std::vector<std::uint32_t> values_;
  std::size_t mask_ = 0;
  std::size_t size_ = 0;
};

}  // namespace tern::balancer
