#include "tern/balancer/balancer.hpp"

#include <algorithm>
#include <cmath>
#include <span>
#include <sstream>
#include <utility>
#include <vector>

namespace tern::balancer {

NodeState NodeStateFromLoad(const LoadVector& load, std::chrono::milliseconds age) {
  NodeState state;
  state.id = load.node_id;
  state.name = load.node_name;
  state.age = age;
  state.draining = load.draining;
  state.speed = load.speed > 0 ? load.speed : 1.0;
  state.capacity = load.capacity > 0 ? load.capacity : std::max(1, load.cpus) * state.speed;
  double wanted = 0;
  std::uint64_t rss = 0;
  for (const auto& job : load.jobs) {
    wanted += job.runnable > 0 ? job.runnable : job.cpu_share;
    rss += job.rss_bytes;
  }
  state.demand = load.demand > 0 ? load.demand : wanted;
  state.mem_limit_bytes = load.mem_limit_bytes > 0 ? load.mem_limit_bytes : load.mem_total_bytes;
  state.mem_used_bytes = load.mem_used_bytes > 0 ? load.mem_used_bytes : rss;
  return state;
}

namespace {

constexpr double kMiB = 1024.0 * 1024.0;

double Speed(const NodeState& node) { return node.speed > 0 ? node.speed : 1.0; }
// A peer of an older version sends no capacity: one CPU of its speed.
double Capacity(const NodeState& node) { return node.capacity > 0 ? node.capacity : Speed(node); }
// CPUs a job wants: its runnable tasks, or what it used when that is not known.
double Wants(const LocalJob& job) { return job.runnable > 0 ? job.runnable : job.cpu_share; }
// Progress per wanted CPU (reference CPUs) on `node` when its jobs want `demand` CPUs: its speed
// while it is not crowded, its share of the capacity when it is.
double Rate(const NodeState& node, double demand) {
  return demand <= 0 ? Speed(node) : std::min(Speed(node), Capacity(node) / demand);
}

std::string Fixed(double value, int precision = 1) {
  std::ostringstream out;
  out.setf(std::ios::fixed);
  out.precision(precision);
  out << value;
  return out.str();
}

std::string Name(const NodeState& node) {
  return node.name.empty() ? "node " + std::to_string(node.id) : node.name;
}

std::string Mib(std::uint64_t bytes) {
  return Fixed(static_cast<double>(bytes) / kMiB, 0) + " MiB";
}

std::string Seconds(double seconds) { return Fixed(seconds, seconds < 10 ? 1 : 0) + " s"; }

// A figure per node id, as std::unordered_map's operator[] gives it (a missing id reads as 0),
// in one small block searched in order: a view is tens of nodes, and a hash table's nodes were
// a few dozen allocations per decision (tern-sim makes millions).
template <typename T>
class ByNode {
 public:
  T& operator[](std::uint64_t id) {
    for (auto& [node, value] : values_) {
      if (node == id) return value;
    }
    return values_.emplace_back(id, T{}).second;
  }

  void reserve(std::size_t n) { values_.reserve(n); }

 private:
  std::vector<std::pair<std::uint64_t, T>> values_;
};

// The ids of `view`'s nodes, packed, in its order: Prune and PlannedLoads search them for every
// plan (a few plans, tens of nodes), where the NodeStates lie ~100 bytes apart. The calling
// thread's buffer, valid until its next call.
std::span<const std::uint64_t> PackedIds(const std::vector<NodeState>& view) {
  thread_local std::vector<std::uint64_t> ids;
  ids.clear();
  for (const auto& node : view) ids.push_back(node.id);
  return ids;
}

}  // namespace

struct Balancer::Candidate {
  const LocalJob* job = nullptr;
  const NodeState* to = nullptr;
  double cpu_gain = 0;
  double affinity_gain = 0;
  double cost = 0;
  double gain() const { return cpu_gain + affinity_gain; }
};

Balancer::Balancer(BalancerOptions options) : options_(std::move(options)) {}

bool Balancer::Fresh(const NodeState& node) const {
  return node.self || node.age <= 5 * options_.interval;
}

void Balancer::Prune(const std::vector<NodeState>& view, Millis now) {
  // The view is a bounded sample (tens of nodes) and this runs at every placement: a linear
  // search, no hash table to allocate.
  const Millis forget_after = std::max(Millis(60000), 10 * options_.interval);
  if (!planned_.empty() || !placed_.empty()) {
    const auto ids = PackedIds(view);
    // Whether information about `node` sampled after `at` is in the view.
    auto shown = [&](std::uint64_t node, Millis at) {
      const auto found = std::find(ids.begin(), ids.end(), node);
      return found != ids.end() &&
             now - view[static_cast<std::size_t>(found - ids.begin())].age > at;
    };
    std::erase_if(planned_, [&](const Planned& plan) {
      if (plan.in_flight) return false;
      return now - plan.at > forget_after || shown(plan.node, plan.at);
    });
    std::erase_if(placed_, [&](const PlacedPlan& plan) {
      return now - plan.at > forget_after || shown(plan.node, plan.at);
    });
  }
  // The maps are walked only when their oldest entry may have expired (tern-sim: each walk is a
  // cache miss per entry, at every placement and decision of thousands of balancers).
  auto expire = [&](std::map<std::string, Millis>& times, Millis& oldest, Millis keep) {
    if (times.empty() || now - oldest < keep) return;
    oldest = Millis::max();
    std::erase_if(times, [&](const auto& item) {
      if (now - item.second >= keep) return true;
      oldest = std::min(oldest, item.second);
      return false;
    });
  };
  expire(arrived_, arrived_oldest_, options_.stay_after_move);
  expire(failed_, failed_oldest_, options_.retry_after_failure);
}

std::vector<Balancer::PlannedLoad> Balancer::PlannedLoads(const std::vector<NodeState>& view,
                                                          Millis now) const {
  // One walk over the plans for the whole view (it is tens of nodes, the plans a few).
  std::vector<PlannedLoad> sums(view.size());
  if (planned_.empty() && placed_.empty()) return sums;
  const auto ids = PackedIds(view);
  for (const auto& plan : placed_) {
    for (std::size_t k = 0; k < ids.size(); ++k) {
      if (ids[k] == plan.node && now - view[k].age <= plan.at) sums[k].demand += kPlacedDemand;
    }
  }
  for (const auto& plan : planned_) {
    for (std::size_t k = 0; k < ids.size(); ++k) {
      if (ids[k] == plan.node && (plan.in_flight || now - view[k].age <= plan.at)) {
        sums[k].demand += plan.demand;
        sums[k].rss_bytes += plan.rss_bytes;
      }
    }
  }
  return sums;
}

std::optional<std::string> Balancer::Held(const LocalJob& job, Millis now) const {
  if (auto found = failed_.find(job.id);
      found != failed_.end() && now - found->second < options_.retry_after_failure) {
    return "its last move failed; not retried for " +
           Seconds(static_cast<double>(options_.retry_after_failure.count()) / 1000) +
           " (retry_after_failure)";
  }
  if (auto found = arrived_.find(job.id);
      found != arrived_.end() && now - found->second < options_.stay_after_move) {
    return "it moved less than " +
           Seconds(static_cast<double>(options_.stay_after_move.count()) / 1000) +
           " ago (stay_after_move)";
  }
  return std::nullopt;
}

Placement Balancer::Place(const std::vector<NodeState>& view, Millis now) {
  Prune(view, now);
  const NodeState* self = nullptr;
  const NodeState* best = nullptr;
  double best_score = 0;
  double self_score = 0;
  int fresh = 0;
  const auto planned = PlannedLoads(view, now);
  auto demand = [&](const NodeState& node) {
    return node.demand + planned[static_cast<std::size_t>(&node - view.data())].demand;
  };
  for (const auto& node : view) {
    if (!node.alive || node.draining || !Fresh(node)) continue;
    ++fresh;
    const double score = (demand(node) + 1) / Capacity(node);
    if (node.self) {
      self = &node;
      self_score = score;
    }
    if (!best || score < best_score) {
      best = &node;
      best_score = score;
    }
  }
  if (!best) return Placement{0, "", "no alive, non-draining node with fresh information"};
  // The local node on ties: no transfer, and every agent would otherwise herd to one node.
  if (self && self_score <= best_score + options_.imbalance) best = self;
  const bool free_here =
      self && options_.place_local_when_free && demand(*self) + 1 <= Capacity(*self);
  if (free_here) best = self;
  placed_.push_back(PlacedPlan{best->id, now});
  if (!options_.reasons) return Placement{best->id, best->name, ""};
  std::string reason = Name(*best) + " demand " + Fixed(demand(*best)) + " of " +
                       Fixed(Capacity(*best)) + " CPU, least loaded of " + std::to_string(fresh) +
                       " fresh nodes";
  if (free_here) {
    reason += " (the local node while it has a free CPU: place_local_when_free)";
  } else if (best == self) {
    reason += " (the local node on ties within " + Fixed(options_.imbalance) + " per CPU)";
  } else if (self) {
    reason += "; here " + Fixed(demand(*self)) + " of " + Fixed(Capacity(*self));
  }
  return Placement{best->id, best->name, reason};
}

Decisions Balancer::Decide(const std::vector<NodeState>& view, const std::vector<LocalJob>& jobs,
                           const MigrationCosts& costs, int outgoing_in_flight, Millis now) {
  Decisions out;
  if (!options_.enabled) return out;
  const NodeState* self = nullptr;
  for (const auto& node : view) {
    if (node.self) self = &node;
  }
  if (!self) return out;
  Prune(view, now);
  const double bytes_per_s = costs.bytes_per_s > 0 ? costs.bytes_per_s : 200e6;
  const double freeze_s = std::max(0.0, costs.freeze_s);
  int budget = options_.max_outgoing - outgoing_in_flight;

  // What each node will carry once the moves and placements already planned land.
  ByNode<double> demand;
  ByNode<std::uint64_t> mem_used;
  demand.reserve(view.size());
  mem_used.reserve(view.size());
  std::vector<const NodeState*> targets;
  const auto planned = PlannedLoads(view, now);
  for (std::size_t k = 0; k < view.size(); ++k) {
    const NodeState& node = view[k];
    demand[node.id] = node.demand + planned[k].demand;
    mem_used[node.id] = static_cast<std::uint64_t>(std::max<std::int64_t>(
        0, static_cast<std::int64_t>(node.mem_used_bytes) + planned[k].rss_bytes));
    if (!node.self && node.alive && !node.draining && Fresh(node)) targets.push_back(&node);
  }

  std::vector<const LocalJob*> movable;
  for (const auto& job : jobs) {
    bool in_flight = false;
    for (const auto& plan : PlansOf(job.id)) in_flight = in_flight || plan.in_flight;
    if (in_flight) continue;
    if (job.pinned) {
      out.skipped.push_back({job.id, "pinned"});
    } else if (!job.refused.empty()) {
      out.skipped.push_back({job.id, "cannot move: " + job.refused});
    } else {
      movable.push_back(&job);
    }
  }

  auto load_of = [&](const NodeState& node) {
    return Fixed(demand[node.id]) + " of " + Fixed(Capacity(node)) + " CPU";
  };
  auto decide = [&](const LocalJob& job, const NodeState& to, std::string kind,
                    std::string reason) {
    MigrateDecision decision;
    decision.job = job.id;
    decision.to = to.id;
    decision.to_name = to.name;
    decision.postcopy = job.rss_bytes > options_.postcopy_above_bytes;
    decision.kind = std::move(kind);
    decision.reason = std::move(reason);
    out.migrate.push_back(std::move(decision));
    const auto rss = static_cast<std::int64_t>(job.rss_bytes);
    Plan(Planned{job.id, to.id, Wants(job), rss, now, false, false});
    Plan(Planned{job.id, self->id, -Wants(job), -rss, now, false, true});
    demand[self->id] -= Wants(job);
    demand[to.id] += Wants(job);
    mem_used[self->id] -= std::min(mem_used[self->id], job.rss_bytes);
    mem_used[to.id] += job.rss_bytes;
    std::erase(movable, &job);
    --budget;
  };
  auto cost_of = [&](const LocalJob& job) {
    return static_cast<double>(job.rss_bytes) / bytes_per_s + freeze_s;
  };
  // The least loaded target with memory room for `job`, or none.
  auto roomiest = [&](const LocalJob& job, bool need_known_memory) -> const NodeState* {
    const NodeState* best = nullptr;
    double best_load = 0;
    for (const auto* node : targets) {
      const bool known = node->mem_limit_bytes > 0;
      if (need_known_memory && !known) continue;
      if (known && static_cast<double>(mem_used[node->id] + job.rss_bytes) >
                       options_.memory_high * static_cast<double>(node->mem_limit_bytes)) {
        continue;
      }
      const double load = (demand[node->id] + Wants(job)) / Capacity(*node);
      if (!best || load < best_load) {
        best = node;
        best_load = load;
      }
    }
    return best;
  };
  auto held = [&](const LocalJob& job) {
    auto why = Held(job, now);
    if (why) out.skipped.push_back({job.id, *why});
    return why.has_value();
  };

  // 1. Memory ushering: the largest jobs first, before anything is killed.
  const auto limit = self->mem_limit_bytes;
  auto short_of_memory = [&] {
    return limit > 0 && static_cast<double>(mem_used[self->id]) >
                            options_.memory_high * static_cast<double>(limit);
  };
  if (short_of_memory()) {
    std::vector<const LocalJob*> by_size = movable;
    std::stable_sort(by_size.begin(), by_size.end(), [](const LocalJob* a, const LocalJob* b) {
      return a->rss_bytes > b->rss_bytes;
    });
    for (const auto* job : by_size) {
      if (budget <= 0 || !short_of_memory()) break;
      if (job->rss_bytes == 0) continue;
      auto why = Held(*job, now);
      if (why && why->find("failed") != std::string::npos) {
        out.skipped.push_back({job->id, *why});
        continue;
      }
      const NodeState* to = roomiest(*job, true);
      const std::string used = Mib(mem_used[self->id]) + " of " + Mib(limit);
      if (!to) {
        out.skipped.push_back({job->id, Name(*self) + " memory " + used +
                                            "; no node has room for " + Mib(job->rss_bytes)});
        continue;
      }
      decide(*job, *to, "memory",
             Name(*self) + " memory " + used + " (above " + Fixed(options_.memory_high * 100, 0) +
                 "%); job " + Mib(job->rss_bytes) + " to " + Name(*to) + " (" +
                 Mib(mem_used[to->id]) + " of " + Mib(to->mem_limit_bytes) + " used)" +
                 (job->rss_bytes > options_.postcopy_above_bytes ? ", post-copy" : ""));
    }
  }

  // 2. Drain: every movable job goes, whatever the gain.
  if (self->draining) {
    for (const auto* job : std::vector<const LocalJob*>(movable)) {
      if (budget <= 0) break;
      auto why = Held(*job, now);
      if (why && why->find("failed") != std::string::npos) {
        out.skipped.push_back({job->id, *why});
        continue;
      }
      const NodeState* to = roomiest(*job, false);
      if (!to) {
        out.skipped.push_back({job->id, Name(*self) + " is draining; no node to take the job"});
        continue;
      }
      decide(*job, *to, "drain",
             Name(*self) + " is draining; " + Name(*to) + " demand " + load_of(*to) + "; job " +
                 Mib(job->rss_bytes) + ", est. cost " + Seconds(cost_of(*job)));
    }
    return out;
  }

  // 3. CPU balancing and affinity by expected gain against cost, best first.
  std::vector<const LocalJob*> balanceable;
  for (const auto* job : movable) {
    if (job->age_s * 1000 < static_cast<double>(options_.min_age.count())) continue;
    if (held(*job)) continue;
    balanceable.push_back(job);
  }
  while (budget > 0) {
    std::optional<Candidate> best;
    const double here_demand = demand[self->id];
    const double load_here = here_demand / Capacity(*self);
    const double rate_here = Rate(*self, here_demand);
    const bool crowded = rate_here < Speed(*self);
    for (const auto* job : balanceable) {
      if (std::find(movable.begin(), movable.end(), job) == movable.end()) continue;
      const double wants = Wants(*job);
      double bytes_here = 0;
      for (const auto& [node, rate] : job->peer_nodes) {
        if (node == self->id) bytes_here += rate;
      }
      for (const auto* to : targets) {
        Candidate c{job, to};
        const double there_demand = demand[to->id] + wants;
        const double load_there = there_demand / Capacity(*to);
        // Lifetime-based: a job that has run `age` is expected to run about as long again.
        if (wants > 0) c.cpu_gain = job->age_s * (1 - rate_here / Rate(*to, there_demand));
        double bytes_there = 0;
        for (const auto& [node, rate] : job->peer_nodes) {
          if (node == to->id) bytes_there += rate;
        }
        // Bytes that stop (or start) crossing nodes, as time at the measured transfer rate.
        c.affinity_gain = job->age_s * (bytes_there - bytes_here) / bytes_per_s;
        c.cost = cost_of(*job);
        // Only out of a crowded node (its jobs want more CPUs than it has): a job alone on a
        // slow node that moves to a faster one takes that node's CPU from the jobs placement
        // sends there, which tern-sim showed costs more than it gains.
        const bool balances = crowded && load_here - load_there > options_.imbalance;
        // Towards talking peers only onto a node no busier than this one after the move: two
        // peers on two nodes never swap places.
        const bool joins = c.affinity_gain > 0 && load_there <= load_here;
        if (!balances && !joins) continue;
        if (c.gain() < options_.min_gain_ratio * c.cost) continue;
        if (!best || c.gain() > best->gain()) best = c;
      }
    }
    if (!best) break;
    const auto& c = *best;
    if (!options_.reasons) {
      decide(*c.job, *c.to, c.affinity_gain > c.cpu_gain ? "affinity" : "balance", "");
      continue;
    }
    std::string reason = Name(*self) + " demand " + load_of(*self) + ", " + Name(*c.to) + " " +
                         Fixed(demand[c.to->id]) + " of " + Fixed(Capacity(*c.to));
    if (Speed(*c.to) != Speed(*self)) {
      reason += " (speed " + Fixed(Speed(*self)) + " here, " + Fixed(Speed(*c.to)) + " there)";
    }
    reason += "; job age " + Seconds(c.job->age_s) + ", " + Mib(c.job->rss_bytes) + ", est. cost " +
              Seconds(c.cost) + ", gain " + Seconds(c.gain());
    if (c.affinity_gain != 0) {
      reason += " (" + Seconds(c.affinity_gain) + " of it from IPC with jobs on " +
                (c.affinity_gain > 0 ? Name(*c.to) : Name(*self)) + ")";
    }
    decide(*c.job, *c.to, c.affinity_gain > c.cpu_gain ? "affinity" : "balance", reason);
  }
  return out;
}

void Balancer::Plan(Planned plan) {
  // After the plans of the same job: where a multimap's emplace puts it.
  auto at = std::upper_bound(planned_.begin(), planned_.end(), plan.job,
                             [](const std::string& job, const Planned& p) { return job < p.job; });
  planned_.insert(at, std::move(plan));
}

std::span<Balancer::Planned> Balancer::PlansOf(const std::string& job) {
  auto first = std::lower_bound(planned_.begin(), planned_.end(), job,
                                [](const Planned& p, const std::string& j) { return p.job < j; });
  auto last = std::upper_bound(first, planned_.end(), job,
                               [](const std::string& j, const Planned& p) { return j < p.job; });
  return {first, last};
}

void Balancer::OnMigrationStarted(const std::string& job, std::uint64_t to, Millis now) {
  auto plans = PlansOf(job);
  if (plans.empty()) {
    Plan(Planned{job, to, 1.0, 0, now, true, false});  // a move decided elsewhere
    return;
  }
  for (auto& plan : plans) {
    if (!plan.outgoing) plan.node = to;
    plan.at = now;
    plan.in_flight = true;
  }
}

void Balancer::OnMigrationEnded(const std::string& job, bool moved, Millis now) {
  if (!moved) {
    const auto plans = PlansOf(job);
    const auto first = planned_.begin() + (plans.data() - planned_.data());
    planned_.erase(first, first + static_cast<std::ptrdiff_t>(plans.size()));
    failed_[job] = now;
    failed_oldest_ = std::min(failed_oldest_, now);
    return;
  }
  // Counted at the destination until information sampled after the move arrives.
  for (auto& plan : PlansOf(job)) {
    plan.in_flight = false;
    plan.at = now;
  }
  arrived_[job] = now;
  arrived_oldest_ = std::min(arrived_oldest_, now);
}

void Balancer::OnJobArrived(const std::string& job, Millis now) {
  arrived_[job] = now;
  arrived_oldest_ = std::min(arrived_oldest_, now);
}

}  // namespace tern::balancer
