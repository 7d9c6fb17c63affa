// MigrationHistory: the recent migrations this node started (as their source), for
// GET /v1/migrations and /metrics, built from the events this agent publishes — `migration`
// (started, moved with its Stats, failed with its error) and the balancer's `migrate` action,
// which gives a move its kind and reason.
//
// Contract: OnEvent takes every event (others are ignored) in publication order. A migration
// is a record from `started` to `moved` or `failed`; the last kKeep records are kept, newest
// last. A move with no balancer `migrate` action for its job and destination just before it was
// asked for by a user (`kind` "manual"). Counters and histograms cover every migration since
// the agent started, not only the kept ones. Malformed events are ignored.
//
// Thread-safety: not thread-safe; the agent's io_context thread feeds and reads it.
#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>

namespace tern::agent {

class MigrationHistory {
 public:
  static constexpr std::size_t kKeep = 200;
  // Upper bounds (ms) of the freeze and total time histograms' buckets; +Inf follows.
  static constexpr std::array<double, 10> kBucketsMs = {10,  25,   50,   100,  250,
                                                        500, 1000, 2500, 5000, 10000};

  struct Histogram {
    std::array<std::uint64_t, kBucketsMs.size()> buckets{};  // not cumulative
    std::uint64_t count = 0;
    double sum_ms = 0;
    void Observe(double ms);
  };

  void OnEvent(const nlohmann::json& event);

  // The kept records, newest first, at most `limit`: id, job, from, to, mode, kind, reason,
  // outcome (running, moved, failed), started_at, ended_at, freeze_ms, total_ms, phases_ms,
  // bytes, error.
  nlohmann::json Recent(std::size_t limit) const;

  // (outcome, mode) → count, for outcomes moved and failed.
  const std::map<std::pair<std::string, std::string>, std::uint64_t>& outcomes() const {
    return outcomes_;
  }
  const Histogram& freeze() const { return freeze_; }
  const Histogram& total() const { return total_; }
  std::uint64_t bytes_moved() const { return bytes_moved_; }
  std::size_t running() const;

 private:
  struct Why {
    std::string to;
    std::string kind;
    std::string reason;
  };
  nlohmann::json* Find(const std::string& id);

  std::deque<nlohmann::json> records_;
  std::map<std::string, Why> balancer_moves_;  // job → the balancer's latest migrate action
  std::map<std::pair<std::string, std::string>, std::uint64_t> outcomes_;
  Histogram freeze_;
  Histogram total_;
  std::uint64_t bytes_moved_ = 0;
};

}  // namespace tern::agent
