#include "tern/agent/target.hpp"

#include <sstream>

namespace tern::agent {

std::string PercentDecode(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '%' && i + 2 < text.size()) {
      const std::string hex = text.substr(i + 1, 2);
      char* end = nullptr;
      const long value = std::strtol(hex.c_str(), &end, 16);
      if (end == hex.c_str() + 2) {
        out.push_back(static_cast<char>(value));
        i += 2;
        continue;
      }
    }
    out.push_back(text[i] == '+' ? ' ' : text[i]);
  }
  return out;
}

std::string Target::Get(const std::string& key, const std::string& fallback) const {
  auto found = query.find(key);
  return found == query.end() ? fallback : found->second;
}

Target ParseTarget(const std::string& target) {
  Target out;
  const auto question = target.find('?');
  out.path = target.substr(0, question);
  if (question != std::string::npos) out.raw_query = target.substr(question + 1);
  std::stringstream path(out.path);
  std::string segment;
  while (std::getline(path, segment, '/')) {
    if (segment.empty()) continue;
    std::string decoded = PercentDecode(segment);
    if (decoded == "." || decoded == ".." ||
        decoded.find_first_of(std::string("/\0", 2)) != std::string::npos) {
      if (out.error.empty()) out.error = "malformed path segment '" + segment + "'";
    }
    out.segments.push_back(std::move(decoded));
  }
  std::stringstream query(out.raw_query);
  std::string pair;
  while (std::getline(query, pair, '&')) {
    if (pair.empty()) continue;
    const auto equals = pair.find('=');
    out.query[PercentDecode(pair.substr(0, equals))] =
        equals == std::string::npos ? "" : PercentDecode(pair.substr(equals + 1));
  }
  return out;
}

}  // namespace tern::agent
