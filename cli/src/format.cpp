#include "tern/cli/format.hpp"

#include <algorithm>
#include <cstdio>

namespace tern::cli {

std::string HumanBytes(std::uint64_t bytes) {
  if (bytes < 1024) return bytes == 0 ? "0" : std::to_string(bytes) + "B";
  const char* units = "KMGTP";
  double value = static_cast<double>(bytes) / 1024;
  int unit = 0;
  while (value >= 1024 && unit < 4) {
    value /= 1024;
    ++unit;
  }
  char text[32];
  std::snprintf(text, sizeof text, value < 10 ? "%.1f%c" : "%.0f%c", value, units[unit]);
  return text;
}

std::string HumanAge(double seconds) {
  if (seconds < 0) seconds = 0;
  const auto whole = static_cast<long long>(seconds);
  if (whole < 60) return std::to_string(whole) + "s";
  if (whole < 3600) return std::to_string(whole / 60) + "m";
  if (whole < 86400) return std::to_string(whole / 3600) + "h";
  return std::to_string(whole / 86400) + "d";
}

std::string HumanCpu(double seconds) {
  char text[32];
  if (seconds < 60) {
    std::snprintf(text, sizeof text, seconds < 10 ? "%.1fs" : "%.0fs", seconds);
    return text;
  }
  return HumanAge(seconds);
}

std::string Table::Render() const {
  std::vector<size_t> widths;
  for (const auto& row : rows_) {
    if (widths.size() < row.size()) widths.resize(row.size(), 0);
    for (size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], row[i].size());
  }
  std::string out;
  for (const auto& row : rows_) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size()) line += std::string(widths[i] - row[i].size() + 3, ' ');
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out += line + "\n";
  }
  return out;
}

}  // namespace tern::cli
