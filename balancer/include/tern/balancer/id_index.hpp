// IdIndex: node id -> slot number, an open-addressing hash table (linear probing, backward-shift
// deletion; key and value side by side) with one cache miss per lookup. Gossip keeps its entries in
// a flat vector and finds them through this: tern-sim runs thousands of agents, each merging a
// window every second.
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
    if (cells_.empty() || id == 0) return nullptr;
    for (std::size_t i = Home(id);; i = (i + 1) & mask_) {
      if (cells_[i].key == id) return &cells_[i].value;
      if (cells_[i].key == 0) return nullptr;
    }
  }
  const std::uint32_t* Find(std::uint64_t id) const { return const_cast<IdIndex*>(this)->Find(id); }
  void Insert(std::uint64_t id, std::uint32_t value) {
    if ((size_ + 1) * 2 > cells_.size()) Grow();
    std::size_t i = Home(id);
    while (cells_[i].key != 0 && cells_[i].key != id) i = (i + 1) & mask_;
    if (cells_[i].key == 0) ++size_;
    cells_[i] = Cell{id, value};
  }
  void Erase(std::uint64_t id) {
    if (cells_.empty()) return;
    std::size_t i = Home(id);
    while (cells_[i].key != id) {
      if (cells_[i].key == 0) return;
      i = (i + 1) & mask_;
    }
    // Shift back the entries after the hole that probed past it.
    for (std::size_t j = (i + 1) & mask_; cells_[j].key != 0; j = (j + 1) & mask_) {
      const std::size_t home = Home(cells_[j].key);
      const bool between = i <= j ? (i < home && home <= j) : (i < home || home <= j);
      if (between) continue;
      cells_[i] = cells_[j];
      i = j;
    }
    cells_[i].key = 0;
    --size_;
  }
  std::size_t size() const { return size_; }
  // A hint only: starts loading id's home cell, so that a batch of lookups (a gossip window)
  // waits for its cache misses together instead of one after another.
  void Prefetch(std::uint64_t id) const {
    if (!cells_.empty()) __builtin_prefetch(&cells_[Home(id)]);
  }

 private:
  std::size_t Home(std::uint64_t id) const {
    return static_cast<std::size_t>((id * 0x9e3779b97f4a7c15ull) >> 20) & mask_;
  }
  struct Cell {
    std::uint64_t key = 0;
    std::uint32_t value = 0;
  };
  void Grow() {
    std::vector<Cell> cells = std::move(cells_);
    const std::size_t capacity = cells.empty() ? 64 : cells.size() * 2;
    cells_.assign(capacity, Cell{});
    mask_ = capacity - 1;
    size_ = 0;
    for (const auto& cell : cells) {
      if (cell.key != 0) Insert(cell.key, cell.value);
    }
  }
  std::vector<Cell> cells_;
  std::size_t mask_ = 0;
  std::size_t size_ = 0;
};

}  // namespace tern::balancer
