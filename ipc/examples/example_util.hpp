// Small helpers shared by the libtern examples: "--key value" arguments, a name lookup that
// waits for the other job to register, and reporting failures.
//
// Thread-safety: Args is read-only after construction; the functions are stateless.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <map>
#include <string>
#include <tern/ipc.hpp>
#include <thread>
#include <vector>

namespace tern::examples {

// argv as: [mode] --key value ...  (a mode is any first word not starting with "--").
class Args {
 public:
  Args(int argc, char** argv) {
    int i = 1;
    if (i < argc && std::string(argv[i]).rfind("--", 0) != 0) mode_ = argv[i++];
    for (; i < argc; ++i) {
      std::string key = argv[i];
      if (key.rfind("--", 0) != 0) {
        bad_ = "unexpected argument: " + key;
        return;
      }
      key = key.substr(2);
      if (key == "help") {
        help_ = true;
        continue;
      }
      if (i + 1 >= argc) {
        bad_ = "--" + key + " needs a value";
        return;
      }
      values_[key] = argv[++i];
    }
  }

  const std::string& mode() const { return mode_; }
  bool help() const { return help_; }
  const std::string& bad() const { return bad_; }
  std::string Get(const std::string& key, const std::string& fallback) const {
    auto it = values_.find(key);
    return it == values_.end() ? fallback : it->second;
  }
  long Int(const std::string& key, long fallback) const {
    auto it = values_.find(key);
    return it == values_.end() ? fallback : std::strtol(it->second.c_str(), nullptr, 10);
  }

 private:
  std::string mode_;
  std::map<std::string, std::string> values_;
  std::string bad_;
  bool help_ = false;
};

// Prints "<what>: <status>: <message>" and returns 1, for `return Fail(...)` in main.
inline int Fail(const std::string& what, const IpcError& error) {
  std::cerr << what << ": " << error.ToString() << "\n";
  return 1;
}

// Looks `name` up until it exists (the other job may start later) or `wait` runs out.
inline IpcResult<std::uint32_t> LookupWaiting(const Channel& channel, const std::string& name,
                                              std::chrono::milliseconds wait) {
  const auto deadline = std::chrono::steady_clock::now() + wait;
  for (;;) {
    auto found = channel.name_lookup(name);
    if (found || found.status() != JobStatus::kNotFound ||
        std::chrono::steady_clock::now() >= deadline) {
      return found;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

// The median and 99th percentile of `samples` (microseconds), sorted in place.
inline std::pair<double, double> MedianP99(std::vector<double>& samples) {
  if (samples.empty()) return {0, 0};
  std::sort(samples.begin(), samples.end());
  const auto at = [&](double q) {
    return samples[std::min(samples.size() - 1, static_cast<std::size_t>(q * samples.size()))];
  };
  return {at(0.5), at(0.99)};
}

}  // namespace tern::examples
