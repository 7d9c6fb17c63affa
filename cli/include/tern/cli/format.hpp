// Output formatting of the CLI: human-sized numbers and aligned tables in the style of
// kubectl and docker.
//
// Thread-safety: pure functions; Table is a plain value.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace tern::cli {

std::string HumanBytes(std::uint64_t bytes);  // 0, 512B, 12.3K, 4.0M, 1.5G
std::string HumanAge(double seconds);         // 45s, 3m, 2h, 5d
std::string HumanCpu(double seconds);         // 0.0s, 1.2s, 95s, 12m

class Table {
 public:
  explicit Table(std::vector<std::string> header) : rows_{std::move(header)} {}
  void Add(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
  // Columns separated by at least three spaces, left-aligned, no trailing blanks.
  std::string Render() const;

 private:
  std::vector<std::vector<std::string>> rows_;
};

}  // namespace tern::cli
