// Target: an HTTP request target split into path segments and decoded query parameters.
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

  std::string Get(const std::string& key, const std::string& fallback) const;
};

Target ParseTarget(const std::string& target);
std::string PercentDecode(const std::string& text);

}  // namespace tern::agent
