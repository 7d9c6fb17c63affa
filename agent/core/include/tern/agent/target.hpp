// Target: an HTTP request target split into path segments and decoded query parameters.
//
// Segments are split on '/' first and percent-decoded after, so a decoded segment may hold
// what splitting would have cut: one holding '/' or NUL, or equal to "." or "..", makes the
// target malformed (`error` says why; handlers answer 400) — ids in the path become file names.
//
// Thread-safety: a plain value; ParseTarget is pure.
#pragma once

#include <map>
#include <string>
#include <vector>

namespace tern::agent {

struct Target {
  std::string path;
  std::vector<std::string> segments;  // "/v1/jobs/x" → {"v1","jobs","x"}, each percent-decoded
  std::string raw_query;
  std::map<std::string, std::string> query;
  std::string error;  // non-empty: the path is malformed and must be refused

  bool valid() const { return error.empty(); }

  std::string Get(const std::string& key, const std::string& fallback) const;
};

Target ParseTarget(const std::string& target);
std::string PercentDecode(const std::string& text);

}  // namespace tern::agent
