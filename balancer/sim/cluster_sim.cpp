#include "cluster_sim.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <optional>
#include <random>
#include <span>
#include <utility>

#include "finished_jobs.hpp"
#include "load_pool.hpp"
#include "pooled_sim.hpp"
#include "tern/balancer/balancer.hpp"
#include "tern/balancer/gossip.hpp"
#include "workers.hpp"

namespace tern::sim {
namespace {

using balancer::Balancer;
using balancer::Gossip;
using balancer::LoadVector;
using balancer::NodeState;
using balancer::SharedGossipEntry;
// A window in flight is 48 bytes an entry (SharedGossipEntry::checked sits in padding).
static_assert(sizeof(SharedGossipEntry) <= 48);
using Millis = std::chrono::milliseconds;

constexpr std::size_t kMessageOverheadBytes = 40;  // frame header and {"entries":[]}
// How many agents (or messages) ahead the gossip phases start loading the next ones.
constexpr std::size_t kAhead = 8;

struct Job {
  JobSpec spec;
  double remaining = 0;  // reference CPU seconds
  double ready = 0;      // when it can run on `node` (submitted, started remotely, or landed)
  std::uint32_t node = 0;
  int moves = 0;
  std::string id;
};

struct Node {
  NodeSpec spec;
  std::uint64_t id = 0;
  std::vector<std::uint32_t> jobs;  // indices into the job table
  std::uint64_t mem_used = 0;
  std::unique_ptr<Gossip> gossip;
  std::unique_ptr<LoadVector> published;  // the own vector its Gossip gossips (a LoadPool's)
  std::unique_ptr<Balancer> balancer;
  // The node's own: its gossip peers and losses, whichever thread ticks it. Out of line: its
  // 2.5 KB would spread the nodes the per-step passes walk over many more cache lines.
  std::unique_ptr<std::mt19937_64> rng;
  std::uint64_t seq = 0;
  double rate = 0;              // of each of its jobs since step `synced` (Sync, Schedule)
  std::uint32_t synced = 0;     // its jobs ran every step before this one
  double published_demand = 0;  // the figures of the last sample given to SetLocal
  std::size_t published_jobs = 0;
  std::uint64_t published_mem = 0;
  int outgoing = 0;
  int incoming = 0;
  double demand() const { return static_cast<double>(jobs.size() + incoming); }
};

struct Flight {
  double arrive = 0;
  std::uint32_t job = 0;
  std::uint32_t from = 0;
  std::uint32_t to = 0;
  bool placed = false;  // a remote start (placement), not a migration
};

// A window in flight; its entries are in the sending worker's Part (entries[begin, begin+count)).
struct Message {
  std::uint32_t to = 0;
  std::uint32_t part = 0;
  std::uint64_t from = 0;
  std::uint32_t begin = 0;
  std::uint32_t count = 0;
};

// A job that finished during a step: its index, when, and what the report counts of it (read
// while the job is in cache, so that the serial count after the pass reads no job).
struct Finished {
  std::uint32_t job = 0;
  double at = 0;
  double arrival_s = 0;
  double work_s = 0;
  bool moved = false;
};

// A cache line: what one thread writes at every turn (a vector's end, a count) lies apart from
// what another writes, or both would wait for the line to move between their cores.
constexpr std::size_t kLine = 64;

// What one worker's gossip ticks and job steps use and produce; buffers kept for their capacity, so
// that a step allocates nothing (and no thread frees what another allocated).
struct alignas(kLine) Part {
  explicit Part(Millis retain) : pool(retain) {}
  LoadPool pool;
  std::vector<std::uint32_t> due;  // the nodes that tick this step
  std::vector<balancer::SharedGossipSend> sends;
  // The windows sent this step, delivered the next: entries[0, used). Not cleared between
  // steps but written over (clearing read the ~1.5 MB of a step's windows once more, a cache
  // miss per line, to destroy shared_ptrs that own nothing: a delivery moves their vectors out).
  std::vector<SharedGossipEntry> entries;
  std::size_t used = 0;
  std::vector<std::uint32_t> finishing;  // the nodes where this step's jobs finish (Progress)
  // What a placement or decision of this thread's reads (the gossip sample taken just before it,
  // in cache) and the list of the node's jobs it gives its Balancer.
  std::vector<balancer::NodeState> sample;
  std::vector<balancer::LocalJob> local;
};

// What a chunk of consecutive nodes gives the step, gathered in chunk order (so in node order,
// whatever thread ran which chunk): its nodes' migrations and remote starts (FirstPass; a start
// with the index of its arrival); the jobs that finished, the windows sent and their bytes, the
// nodes due to balance (StepNodes).
struct alignas(kLine) ChunkOut {
  std::vector<Flight> moves;
  std::vector<std::pair<std::uint32_t, Flight>> starts;
  std::vector<Finished> finished;
  std::vector<Message> messages;
  std::uint64_t bytes = 0;
  std::vector<std::uint32_t> balance_due;
};

Millis ToMillis(double seconds) { return Millis(std::llround(seconds * 1000)); }

// Hints for a node's generator, cold in cache at its tick (its 2.5 KB state and the position in
// it, a line apart): libstdc++'s layout, 312 words then the position; where that differs, only
// the hints are wrong (the position is read only to choose an address to load).
constexpr std::size_t kMtWords = 312;
void PrefetchPosition(const std::mt19937_64& rng) {
  __builtin_prefetch(reinterpret_cast<const char*>(&rng) + kMtWords * sizeof(std::uint64_t));
}
void PrefetchNextWord(const std::mt19937_64& rng) {
  if constexpr (sizeof(std::mt19937_64) == (kMtWords + 1) * sizeof(std::uint64_t)) {
    std::size_t position = 0;
    std::memcpy(&position, reinterpret_cast<const char*>(&rng) + kMtWords * sizeof(std::uint64_t),
                sizeof position);
    if (position < kMtWords) {
      __builtin_prefetch(reinterpret_cast<const char*>(&rng) + position * sizeof(std::uint64_t));
    }
  }
}

// NodeStateFromLoad() for the vectors tern-sim publishes, which list no jobs and carry no name
// (Publish): the same state from their first cache line only (the fallbacks that read the
// job list give 0 here, and the name is empty). A sample reads 16 vectors, each cold in cache.
NodeState SimNodeState(const LoadVector& load, Millis age) {
  NodeState state;
  state.id = load.node_id;
  state.age = age;
  state.draining = load.draining;
  state.speed = load.speed > 0 ? load.speed : 1.0;
  state.capacity = load.capacity > 0 ? load.capacity : std::max(1, load.cpus) * state.speed;
  state.demand = load.demand > 0 ? load.demand : 0.0;
  state.mem_limit_bytes = load.mem_limit_bytes > 0 ? load.mem_limit_bytes : load.mem_total_bytes;
  state.mem_used_bytes = load.mem_used_bytes > 0 ? load.mem_used_bytes : 0;
  return state;
}
// What SimNodeState() reads of a vector (a hint's end, as DecisionEnd).
const char* FirstLine(const LoadVector& load) { return reinterpret_cast<const char*>(&load) + 64; }
// Whether SimNodeState() gives NodeStateFromLoad()'s state for `load`.
bool SimMapsLikeTheAgent(const LoadVector& load) {
  const auto* first = reinterpret_cast<const char*>(&load);
  const auto* draining = reinterpret_cast<const char*>(&load.draining);
  return load.jobs.empty() && load.node_name.empty() &&
         draining + sizeof load.draining <= first + 64 &&
         reinterpret_cast<const char*>(&load.cpus) + sizeof load.cpus <= first + 64;
}

class Sim {
 public:
  Sim(const SimOptions& options, Policy policy)
      : options_(options),
        policy_(policy),
        workload_(options.workload),
        rng_(options.workload.seed + 17),
        workers_(std::max(1u, options.node_threads)) {
    // A vector is reused once no Gossip can hold it: RetainsFor() after its last sample time,
    // which a window's flight (one step) may push back by a step per hop; twice that, plus an
    // interval, leaves a margin that SampleViews() checks.
    {
      balancer::GossipOptions g;
      g.max_age = options.gossip_max_age;
      const auto retain = 2 * Gossip(g).RetainsFor() + options.gossip_interval;
      for (unsigned part = 0; part < workers_.size(); ++part) parts_.emplace_back(retain);
    }
    const auto& specs = workload_.nodes();
    const bool gossip = UsesGossip();
    std::uniform_real_distribution<double> phase(0, 1);
    if (gossip) observed_ = Observed(phase);
    for (std::size_t i = 0; i < specs.size(); ++i) {
      Node node;
      node.spec = specs[i];
      node.id = i + 1;
      ids_.push_back(node.id);
      if (gossip) {
        balancer::GossipOptions g;
        g.self_id = node.id;
        g.window = options.gossip_window;
        g.max_age = options.gossip_max_age;
        g.view_max = observed_[i] ? options.view_max : ReadViewMax();
        node.gossip = std::make_unique<Gossip>(g);
        gossips_.push_back(node.gossip.get());
      }
      balancer::BalancerOptions b = options.balancer;
      b.reasons = false;                                             // nobody reads them here
      if (policy != Policy::kTern) b.place_local_when_free = false;  // tern's own rule
      node.balancer = std::make_unique<Balancer>(b);
      const double gossip_s = static_cast<double>(options.gossip_interval.count()) / 1000;
      const double balance_s =
          static_cast<double>(node.balancer->options().interval.count()) / 1000;
      next_gossip_.push_back(phase(rng_) * gossip_s);
      due_.push_back(kNever);
      next_balance_.push_back(phase(rng_) * balance_s);
      node.rng = std::make_unique<std::mt19937_64>(options.workload.seed * 1000003 + i);
      nodes_.push_back(std::move(node));
    }
    chunk_out_.resize(Chunks());
  }

  // The nodes whose whole view the report reads (SampleViews: 20 a minute, drawn from rng_ once
  // the nodes' phases are): rng_ run ahead on a copy, each phase drawn as the constructor does.
  std::vector<bool> Observed(std::uniform_real_distribution<double> phase) const {
    std::mt19937_64 ahead = rng_;
    const std::size_t n = options_.workload.nodes;
    for (std::size_t i = 0; i < n; ++i) {
      phase(ahead);
      phase(ahead);
    }
    std::vector<bool> observed(n, false);
    const auto minutes = static_cast<std::size_t>(std::ceil(options_.hours * 60)) + 1;
    for (std::size_t k = 0; k < 20 * minutes; ++k) observed[ahead() % n] = true;
    return observed;
  }
  // The bound on the view of a node whose whole view nobody reads: all anyone reads of it are
  // its windows (`window` freshest entries) and the Balancer's samples (`sample` freshest), and
  // a bounded view holds the view_max freshest entries an unbounded one would (Gossip's
  // contract), so a bound of the larger of the two gives the same windows and samples as
  // --view-max, with half the slots to touch (docs/balancer.md, "Simulator").
  std::size_t ReadViewMax() const {
    const std::size_t read = std::max(options_.gossip_window, options_.sample);
    return options_.view_max == 0 ? 0 : std::min(options_.view_max, read);
  }

  SimResult Run() {
    const double end = options_.hours * 3600;
    const double step = options_.step_s;
    std::vector<JobSpec> arrivals;
    // A step in two passes over the nodes on the workers, each touching a node's gossip once:
    // (1) the nodes due at the last step decide, the windows sent during the last step arrive and
    // the step's jobs are placed (FirstPass); (2) the jobs whose flight ends land, the jobs run,
    // the due nodes tick and those due to balance are listed (StepNodes). A pass changes only
    // the nodes of the chunk it works on; what a decision or placement does to another node (a
    // job on its way there) is applied after the pass, in node and arrival order, so the run is
    // the same for any number of threads: a step's decisions and placements are simultaneous,
    // as on a real cluster, where a node hears of a job sent to it only when the request
    // arrives (docs/balancer.md, "Threads").
    //
    // The steps' times, as the loop has always summed them (a node's jobs run lazily, between
    // steps: Sync), and the time after the last.
    for (double t = 0; t < end; t += step) times_.push_back(t);
    times_.push_back(times_.empty() ? step : times_.back() + step);
    double last_t = 0;
    for (step_ = 0; step_ + 1 < times_.size(); ++step_) {
      const double t = times_[step_];
      const Millis now = ToMillis(t);
      arrivals.clear();
      workload_.Arrivals(t, t + step, arrivals);  // its own generator: independent of the state
      FirstPass(now, Places() ? std::span<const JobSpec>(arrivals) : std::span<const JobSpec>(),
                last_t);
      if (!Places()) {
        for (const auto& spec : arrivals) StartHere(spec);
      }
      StepNodes(t, step, now);
      if (UsesGossip() && t >= next_view_sample_) {
        SampleViews(now);
        next_view_sample_ += 60;
      }
      last_t = t;
    }
    // The last step's decisions (the windows in flight: nobody reads a view any more).
    outbox_.clear();
    FirstPass(ToMillis(last_t), {}, last_t);
    SimResult result;
    result.policy = policy_;
    result.nodes = nodes_.size();
    result.jobs_started = started_;
    result.remote_starts_per_job =
        started_ > 0 ? static_cast<double>(remote_starts_) / static_cast<double>(started_) : 0;
    double capacity = 0;
    for (const auto& node : nodes_) capacity += node.spec.capacity();
    finished_.Report(result, capacity, end);
    if (started_ > 0) {
      result.migrations_per_job = static_cast<double>(migrations_) / static_cast<double>(started_);
    }
    result.gossip_bytes_per_node_s =
        static_cast<double>(gossip_bytes_) / static_cast<double>(nodes_.size()) / end;
    if (view_samples_ > 0) {
      result.mean_view_age_s = view_age_sum_ / static_cast<double>(view_entries_) / 1000;
      result.mean_view_size =
          static_cast<double>(view_entries_) / static_cast<double>(view_samples_);
    }
    if (sample_entries_ > 0) {
      result.mean_sample_age_s = sample_age_sum_ / static_cast<double>(sample_entries_) / 1000;
    }
    return result;
  }

 private:
  bool UsesGossip() const {
    return policy_ == Policy::kLeastLoaded || policy_ == Policy::kTern ||
           policy_ == Policy::kAgeOnly;
  }
  bool Migrates() const { return policy_ == Policy::kTern || policy_ == Policy::kAgeOnly; }
  bool Places() const { return policy_ == Policy::kLeastLoaded || policy_ == Policy::kTern; }

  // What node `i`'s Balancer decides on: itself, exactly, and the freshest part of its gossip
  // view, `sample` (TakeSample), whose first element TakeSample left for the node itself: it
  // is written here, in place (the sample is read once), instead of copying the sample behind
  // it (17 NodeStates per placement and decision, on the one thread that runs them).
  const std::vector<NodeState>& View(std::uint32_t i, std::vector<NodeState>& sample) {
    const Node& node = nodes_[i];
    NodeState self;
    self.id = node.id;
    self.self = true;
    self.capacity = node.spec.capacity();
    self.speed = node.spec.speed;
    self.demand = node.demand();
    self.mem_limit_bytes = node.spec.mem_limit_bytes;
    self.mem_used_bytes = node.mem_used;
    sample.front() = std::move(self);
    return sample;
  }

  // Hints for the gossip sample of node_at(k) of n: the Gossips of the next ones, in stages, so
  // that their misses overlap.
  template <typename NodeAt>
  void SampleHints(std::size_t k, std::size_t n, NodeAt node_at) const {
    auto gossip = [&](std::size_t j) { return gossips_[node_at(j)]; };
    if (k + kAhead < n) gossip(k + kAhead)->Prefetch();
    if (k + 3 * kAhead / 4 < n) gossip(k + 3 * kAhead / 4)->PrefetchTick(Millis::min());
    if (k + kAhead / 2 < n) gossip(k + kAhead / 2)->PrefetchTickSlots();
    if (k + kAhead / 4 < n) gossip(k + kAhead / 4)->PrefetchLoads(FirstLine);
  }
  // The freshest part of node's gossip view into `sample`, after a first element left for the
  // node itself (View). Only from the thread that has the node's chunk (a Gossip is used by one
  // thread at a time).
  void TakeSample(std::uint32_t node, std::vector<NodeState>& sample, Millis now) const {
    sample.clear();
    sample.emplace_back();  // the node itself, written by View() when its Balancer runs
    gossips_[node]->VisitFreshest(
        now, options_.sample,
        [&](const LoadVector& load, Millis age) { sample.push_back(SimNodeState(load, age)); },
        FirstLine);
  }

  // Chunks of consecutive nodes the passes of a step deal out to the workers as they come free
  // (one per worker would leave workers idle: the chunks' work varies).
  std::size_t Chunks() const {
    return workers_.size() == 1 ? 1 : std::min<std::size_t>(16 * workers_.size(), nodes_.size());
  }
  std::size_t ChunkOf(std::uint32_t node, std::size_t chunks) const {
    return static_cast<std::size_t>(static_cast<std::uint64_t>(node) * chunks / nodes_.size());
  }
  // The first node of chunk c (ChunkOf's inverse): chunk c is [ChunkBegin(c), ChunkBegin(c + 1)).
  std::size_t ChunkBegin(std::size_t c, std::size_t chunks) const {
    return static_cast<std::size_t>((static_cast<std::uint64_t>(c) * nodes_.size() + chunks - 1) /
                                    chunks);
  }
  // order: the k < n by chunk of node_at(k), in their order within a chunk; chunk c's are
  // order[begin[c], begin[c + 1]).
  template <typename NodeAt>
  void Bucket(std::size_t chunks, std::size_t n, NodeAt node_at, std::vector<std::uint32_t>& order,
              std::vector<std::uint32_t>& begin) const {
    begin.assign(chunks + 1, 0);
    for (std::size_t k = 0; k < n; ++k) ++begin[ChunkOf(node_at(k), chunks) + 1];
    for (std::size_t c = 0; c < chunks; ++c) begin[c + 1] += begin[c];
    order.resize(n);
    fill_ = begin;
    for (std::size_t k = 0; k < n; ++k) {
      order[fill_[ChunkOf(node_at(k), chunks)]++] = static_cast<std::uint32_t>(k);
    }
  }

  // Chunk c's part of what Bucket() sorted.
  static std::span<const std::uint32_t> OfChunk(const std::vector<std::uint32_t>& order,
                                                const std::vector<std::uint32_t>& begin,
                                                std::size_t c) {
    return std::span(order).subspan(begin[c], begin[c + 1] - begin[c]);
  }

  // The first pass of a step, by chunks of consecutive nodes on the workers. For each node of a
  // chunk, in this order: its decision of the last step (at `decide_t`, if StepNodes listed it),
  // the windows sent to it during the last step (one step of delay; in the order they were sent),
  // then the placements of the jobs submitted on it (`arrivals`, in their order). Each placement
  // and decision reads a gossip sample taken just before (its thread's buffer, in cache). Then
  // the moves and remote starts, which reach other nodes, are applied: moves in node order,
  // then starts in arrival order, whatever the chunks.
  void FirstPass(Millis now, std::span<const JobSpec> arrivals, double decide_t) {
    inbox_.swap(outbox_);
    const std::size_t chunks = Chunks();
    Bucket(
        chunks, inbox_.size(), [&](std::size_t k) { return inbox_[k].to; }, message_order_,
        message_begin_);
    Bucket(
        chunks, arrivals.size(), [&](std::size_t k) { return arrivals[k].origin; }, arrival_order_,
        arrival_begin_);
    Bucket(
        chunks, balance_due_.size(), [&](std::size_t k) { return balance_due_[k]; },
        decision_order_, decision_begin_);
    // The new jobs' slots and numbers, in arrival order, before the chunks fill them in.
    new_jobs_.resize(arrivals.size());
    for (auto& index : new_jobs_) index = NewJob();
    const std::uint64_t first_number = next_job_id_;
    next_job_id_ += arrivals.size();
    starts_.assign(arrivals.size(), std::nullopt);  // filled in after the pass: see ChunkOut
    workers_.RunChunks(chunks, [&](unsigned part, std::size_t c) {
      Part& mine = parts_[part];
      DecideChunk(OfChunk(decision_order_, decision_begin_, c), decide_t, mine,
                  chunk_out_[c].moves);
      DeliverChunk(OfChunk(message_order_, message_begin_, c), now);
      PlaceChunk(arrivals, OfChunk(arrival_order_, arrival_begin_, c), first_number, now, mine,
                 chunk_out_[c].starts);
    });
    inbox_.clear();
    for (auto& part : parts_) part.used = 0;
    balance_due_.clear();
    for (std::size_t c = 0; c < chunks; ++c) {
      for (const auto& move : chunk_out_[c].moves) Dispatch(move);
      chunk_out_[c].moves.clear();
      for (const auto& [a, start] : chunk_out_[c].starts) starts_[a] = start;
      chunk_out_[c].starts.clear();
    }
    for (const auto& start : starts_) {
      if (start) Dispatch(*start);
    }
    started_ += arrivals.size();
  }

  // The decisions of the nodes balance_due_[order[k]], in that order, with the costs of moving
  // from each; their migrations go to `moves`.
  void DecideChunk(std::span<const std::uint32_t> order, double t, Part& mine,
                   std::vector<Flight>& moves) {
    const std::size_t n = order.size();
    auto node_at = [&](std::size_t k) { return balance_due_[order[k]]; };
    const Millis now = ToMillis(t);
    for (std::size_t k = 0; k < n; ++k) {
      // Hints, in stages some nodes ahead: the Node, then its Balancer and job list, then the
      // plans and the jobs, and the gossip its sample reads.
      if (k + kAhead < n) {
        const auto* node = reinterpret_cast<const char*>(&nodes_[node_at(k + kAhead)]);
        for (std::size_t byte = 0; byte < sizeof(Node); byte += 64) __builtin_prefetch(node + byte);
      }
      if (k + kAhead / 2 < n) {
        const Node& node = nodes_[node_at(k + kAhead / 2)];
        node.balancer->Prefetch();
        __builtin_prefetch(node.jobs.data());
      }
      if (k + kAhead / 4 < n) {
        const Node& node = nodes_[node_at(k + kAhead / 4)];
        node.balancer->PrefetchPlans();
        for (const auto job : node.jobs) {
          __builtin_prefetch(&jobs_[job]);
          __builtin_prefetch(reinterpret_cast<const char*>(&jobs_[job]) + 64);
        }
      }
      SampleHints(k, n, node_at);
      TakeSample(node_at(k), mine.sample, now);
      Balance(node_at(k), t, mine, moves);
    }
  }

  // The windows inbox_[order[k]], in that order, to their receivers.
  void DeliverChunk(std::span<const std::uint32_t> order, Millis now) {
    const std::size_t n = order.size();
    auto entries = [&](const Message& message) {
      return std::span<SharedGossipEntry>(parts_[message.part].entries)
          .subspan(message.begin, message.count);
    };
    auto message = [&](std::size_t k) -> Message& { return inbox_[order[k]]; };
    for (std::size_t k = 0; k < n; ++k) {
      // Hints, in stages some messages ahead: the receiver's Gossip, then the slots
      // of the window; each receiver is cold in cache, and their misses overlap.
      if (k + kAhead < n) gossips_[message(k + kAhead).to]->Prefetch();
      if (k + kAhead / 2 < n) {
        const auto& next = message(k + kAhead / 2);
        gossips_[next.to]->PrefetchWindow(entries(next), next.from);
      }
      if (k + kAhead / 4 < n) {
        const auto& next = message(k + kAhead / 4);
        gossips_[next.to]->PrefetchSlots(entries(next));
      }
      auto& m = message(k);
      gossips_[m.to]->OnReceiveShared(m.from, entries(m), now);
    }
  }

  // The placements of arrivals[order[k]], in that order, each by its origin's Balancer; a start
  // on another node goes to `starts`, with the arrival's index.
  void PlaceChunk(std::span<const JobSpec> arrivals, std::span<const std::uint32_t> order,
                  std::uint64_t first_number, Millis now, Part& mine,
                  std::vector<std::pair<std::uint32_t, Flight>>& starts) {
    const std::size_t n = order.size();
    auto origin = [&](std::size_t k) { return arrivals[order[k]].origin; };
    for (std::size_t k = 0; k < n; ++k) {
      // Hints, in stages some placements ahead: the origin's Node, its Balancer, its plans.
      if (k + kAhead < n) __builtin_prefetch(&nodes_[origin(k + kAhead)].balancer);
      if (k + kAhead / 2 < n) nodes_[origin(k + kAhead / 2)].balancer->Prefetch();
      if (k + kAhead / 4 < n) nodes_[origin(k + kAhead / 4)].balancer->PrefetchPlans();
      SampleHints(k, n, origin);
      const auto a = order[k];
      const JobSpec& spec = arrivals[a];
      std::uint32_t target = spec.origin;
      if (!spec.explicit_node) {  // else placed by the user: started where it was submitted
        TakeSample(spec.origin, mine.sample, now);
        auto placed = nodes_[spec.origin].balancer->Place(View(spec.origin, mine.sample), now);
        if (placed.node != 0) target = static_cast<std::uint32_t>(placed.node - 1);
      }
      if (auto start = Start(spec, new_jobs_[a], first_number + a, target)) {
        starts.emplace_back(a, *start);
      }
    }
  }

  // The policies that do not place (none, random, age-only): arrival `spec` starts where it was
  // submitted or, for random, on a random node; after the first pass, in arrival order.
  void StartHere(const JobSpec& spec) {
    std::uint32_t target = spec.origin;
    if (policy_ == Policy::kRandom && !spec.explicit_node) {
      target = static_cast<std::uint32_t>(rng_() % nodes_.size());
    }
    if (auto start = Start(spec, NewJob(), next_job_id_++, target)) Dispatch(*start);
    ++started_;
  }

  std::uint32_t NewJob() {
    if (!free_.empty()) {
      const auto index = free_.back();
      free_.pop_back();
      return index;
    }
    jobs_.emplace_back();
    return static_cast<std::uint32_t>(jobs_.size() - 1);
  }

  // Job `index`, numbered `number`, runs arrival `spec` on `target`. Where it was submitted, it
  // runs now; elsewhere it starts after the forwarded submit (`tern submit` to another node's
  // agent), remote_start_s later: the flight returned, which the caller dispatches (it reaches
  // another node). Changes only the job and the origin node.
  std::optional<Flight> Start(const JobSpec& spec, std::uint32_t index, std::uint64_t number,
                              std::uint32_t target) {
    Job& job = jobs_[index];
    job.spec = spec;
    job.remaining = spec.work_s;
    job.moves = 0;
    job.id = "j" + std::to_string(number);
    if (target == spec.origin) {
      job.ready = spec.arrival_s;
      AddTo(index, target);
      return std::nullopt;
    }
    return Flight{spec.arrival_s + std::max(0.0, options_.remote_start_s), index, spec.origin,
                  target, true};
  }

  // A job on its way to another node (a move or a remote start): the target counts it until it
  // lands (Land), from the next StepNodes on (nothing reads the count before: its own chunk
  // counts it there, instead of a cache miss on the target's Node here, on one thread).
  void Dispatch(const Flight& flight) {
    arriving_.push_back(flight.to);
    flights_.push_back(flight);
    if (!flight.placed) {
      ++migrations_;
    } else if (options_.remote_start_s > 0) {
      ++remote_starts_;
    }
  }

  // Between the steps of the current one and the next Progress (placements, landings,
  // decisions): the node's jobs ran the steps before, then the set changes.
  void AddTo(std::uint32_t job, std::uint32_t node) {
    Sync(node, step_);
    jobs_[job].node = node;
    nodes_[node].jobs.push_back(job);
    nodes_[node].mem_used += jobs_[job].spec.rss_bytes;
    Schedule(node, step_);
  }

  void RemoveFrom(std::uint32_t job, std::uint32_t node) {
    Sync(node, step_);
    auto& list = nodes_[node].jobs;
    auto it = std::find(list.begin(), list.end(), job);
    *it = list.back();
    list.pop_back();
    nodes_[node].mem_used -= jobs_[job].spec.rss_bytes;
    Schedule(node, step_);
  }

  // Processor sharing, lazily: a node's jobs all run at its rate while its set of jobs stays the
  // same, so a node is touched only when the set changes (AddTo, RemoveFrom) or when a job
  // finishes (Schedule predicts the step, Progress runs it), not at every step.
  // Sync: node's jobs run the steps [synced, k), each from when it became runnable.
  void Sync(std::uint32_t i, std::size_t k) {
    Node& node = nodes_[i];
    if (node.synced >= k) return;
    const double from = times_[node.synced];
    const double to = times_[k];
    for (const auto index : node.jobs) {
      Job& job = jobs_[index];
      const double ran = to - std::max(from, job.ready);
      if (ran > 0) job.remaining -= node.rate * ran;
    }
    node.synced = static_cast<std::uint32_t>(k);
  }
  // Node i (synced to step k) runs at speed x min(1, cores / jobs) from step k on; due_[i] is
  // the step during which its first job finishes at that rate (kNever without jobs).
  void Schedule(std::uint32_t i, std::size_t k) {
    Node& node = nodes_[i];
    std::uint32_t due = kNever;
    node.rate = node.jobs.empty()
                    ? 0
                    : node.spec.speed *
                          std::min(1.0, node.spec.cores / static_cast<double>(node.jobs.size()));
    for (const auto index : node.jobs) {
      const Job& job = jobs_[index];
      // The first step s >= k whose end, times_[s + 1], is at or after the job's last work.
      const double done = std::max(times_[k], job.ready) + job.remaining / node.rate;
      const auto end =
          std::lower_bound(times_.begin() + static_cast<std::ptrdiff_t>(k) + 1, times_.end(), done);
      if (end != times_.end()) {
        due = std::min(due, static_cast<std::uint32_t>(end - times_.begin() - 1));
      }
    }
    due_[i] = due;
  }

  // The second pass of a step, by chunks of consecutive nodes on the workers: the jobs whose
  // flight ends during the step land (Land), the nodes in which a job finishes run their jobs
  // (Progress), the nodes whose gossip interval is due tick, and those due to balance are listed
  // (they decide in the next FirstPass). Then, in node order, so that the run is the same for
  // any number of workers: the sources of the moves that ended hear of it, the jobs that
  // finished are counted (floating-point sums), the windows join the outbox, the nodes that
  // balance join balance_due_.
  void StepNodes(double t, double step, Millis now) {
    const std::size_t chunks = Chunks();
    // The flights that end during this step, in the order they were dispatched.
    landing_.clear();
    std::erase_if(flights_, [&](const Flight& flight) {
      if (flight.arrive >= t + step) return false;
      landing_.push_back(flight);
      return true;
    });
    Bucket(
        chunks, landing_.size(), [&](std::size_t k) { return landing_[k].to; }, landing_order_,
        landing_begin_);
    Bucket(
        chunks, arriving_.size(), [&](std::size_t k) { return arriving_[k]; }, arriving_order_,
        arriving_begin_);
    // Every node's Balancer has the same interval: not read from each (a cache miss).
    const double balance_s = static_cast<double>(options_.balancer.interval.count()) / 1000;
    workers_.RunChunks(chunks, [&](unsigned part, std::size_t c) {
      const std::size_t begin = ChunkBegin(c, chunks);
      const std::size_t end = ChunkBegin(c + 1, chunks);
      Part& mine = parts_[part];
      ChunkOut& out = chunk_out_[c];
      for (const auto k : OfChunk(arriving_order_, arriving_begin_, c)) {
        ++nodes_[arriving_[k]].incoming;
      }
      Land(OfChunk(landing_order_, landing_begin_, c));
      Progress(begin, end, step_, step, out.finished, mine.finishing);
      if (UsesGossip()) GossipTicks(begin, end, t, now, part, mine, out);
      auto& due = out.balance_due;
      due.clear();
      for (std::size_t i = begin; i < end; ++i) {
        if (next_balance_[i] <= t) {
          if (Migrates() && !nodes_[i].jobs.empty()) due.push_back(static_cast<std::uint32_t>(i));
          next_balance_[i] += balance_s;
        }
      }
    });
    arriving_.clear();
    for (const auto& flight : landing_) {
      if (flight.placed) continue;
      --nodes_[flight.from].outgoing;
      nodes_[flight.from].balancer->OnMigrationEnded(jobs_[flight.job].id, true,
                                                     ToMillis(flight.arrive));
    }
    for (std::size_t c = 0; c < chunks; ++c) {
      ChunkOut& out = chunk_out_[c];
      for (const auto& job : out.finished) {
        finished_.Add(job.arrival_s, job.at, job.work_s, job.moved);
        free_.push_back(job.job);
      }
      gossip_bytes_ += out.bytes;
      out.bytes = 0;
      outbox_.insert(outbox_.end(), out.messages.begin(), out.messages.end());
      out.messages.clear();
      balance_due_.insert(balance_due_.end(), out.balance_due.begin(), out.balance_due.end());
    }
  }

  // The flights landing_[order[k]] land, in that order, on their targets (all in one chunk): the
  // job runs there from the flight's end; a moved job's target hears of it (its source, after
  // the pass: StepNodes).
  void Land(std::span<const std::uint32_t> order) {
    for (const auto k : order) {
      const Flight& flight = landing_[k];
      Job& job = jobs_[flight.job];
      job.ready = flight.arrive;
      AddTo(flight.job, flight.to);
      --nodes_[flight.to].incoming;
      if (flight.placed) continue;
      ++job.moves;
      nodes_[flight.to].balancer->OnJobArrived(job.id, ToMillis(flight.arrive));
    }
  }

  // The nodes of [begin, end) in which a job finishes during step k (Schedule) run their jobs
  // to its end; those that finish go to `finished`, in node order.
  void Progress(std::size_t begin, std::size_t end, std::size_t k, double step,
                std::vector<Finished>& finished, std::vector<std::uint32_t>& due) {
    finished.clear();
    due.clear();
    for (std::size_t i = begin; i < end; ++i) {
      if (due_[i] == k) due.push_back(static_cast<std::uint32_t>(i));
    }
    const double t = times_[k];
    for (std::size_t d = 0; d < due.size(); ++d) {
      // Hints, some nodes ahead: the job lists, then the jobs (wherever they were allocated).
      if (d + kAhead < due.size()) __builtin_prefetch(nodes_[due[d + kAhead]].jobs.data());
      if (d + kAhead / 2 < due.size()) {
        for (const auto job : nodes_[due[d + kAhead / 2]].jobs) {
          __builtin_prefetch(&jobs_[job].ready);
        }
      }
      const std::uint32_t i = due[d];
      Sync(i, k);
      Node& node = nodes_[i];
      const double rate = node.rate;
      for (std::size_t j = 0; j < node.jobs.size();) {
        Job& job = jobs_[node.jobs[j]];
        // A job that became runnable during the step runs for the rest of it only.
        const double ran = std::min(step, t + step - job.ready);
        if (ran <= 0) {
          ++j;
          continue;
        }
        job.remaining -= rate * ran;
        if (job.remaining > 0) {
          ++j;
          continue;
        }
        finished.push_back(Finished{node.jobs[j], t + step + job.remaining / rate,
                                    job.spec.arrival_s, job.spec.work_s, job.moves > 0});
        node.mem_used -= job.spec.rss_bytes;
        node.jobs[j] = node.jobs.back();
        node.jobs.pop_back();
      }
      node.synced = static_cast<std::uint32_t>(k + 1);
      Schedule(i, k + 1);
    }
  }

  // The nodes of [begin, end) whose gossip interval is due tick; their windows go to `mine`.
  void GossipTicks(std::size_t begin, std::size_t end, double t, Millis now, unsigned part,
                   Part& mine, ChunkOut& out) {
    const double interval = static_cast<double>(options_.gossip_interval.count()) / 1000;
    auto& due = mine.due;
    due.clear();
    for (std::size_t i = begin; i < end; ++i) {
      if (next_gossip_[i] <= t) due.push_back(static_cast<std::uint32_t>(i));
    }
    // Hints, in stages some agents ahead (Gossip::Prefetch): their misses overlap.
    auto gossip = [&](std::size_t k) { return nodes_[due[k]].gossip.get(); };
    for (std::size_t k = 0; k < due.size(); ++k) {
      if (k + 2 * kAhead < due.size()) __builtin_prefetch(&nodes_[due[k + 2 * kAhead]].gossip);
      if (k + kAhead < due.size()) gossip(k + kAhead)->Prefetch();
      if (k + 3 * kAhead / 4 < due.size()) gossip(k + 3 * kAhead / 4)->PrefetchTick(now);
      // (Not PrefetchLoads(): a window carries its vectors' pointers, and nothing here reads
      // them.)
      if (k + kAhead / 2 < due.size()) gossip(k + kAhead / 2)->PrefetchTickSlots();
      // The generator, which draws the peer and the loss: its position, then its next word.
      if (k + kAhead < due.size()) PrefetchPosition(*nodes_[due[k + kAhead]].rng);
      if (k + kAhead / 2 < due.size()) PrefetchNextWord(*nodes_[due[k + kAhead / 2]].rng);
      Node& node = nodes_[due[k]];
      GossipTick(node, now, static_cast<std::uint32_t>(part), mine, out);
      next_gossip_[due[k]] += interval;
    }
  }

  void GossipTick(Node& node, Millis now, std::uint32_t index, Part& part, ChunkOut& out) {
    if (node.seq > 0 && node.published_demand == node.demand() &&
        node.published_jobs == node.jobs.size() && node.published_mem == node.mem_used) {
      // The same figures as last time: the same sample, younger (receivers refresh its age).
      node.gossip->RefreshLocal(now);
    } else {
      Publish(node, now, part.pool);
    }
    Send(node, now, index, part, out);
  }

  void Publish(Node& node, Millis now, LoadPool& pool) {
    node.published_demand = node.demand();
    node.published_jobs = node.jobs.size();
    node.published_mem = node.mem_used;
    auto vector = pool.Take(now);
    LoadVector& self = *vector;
    self.node_id = node.id;
    self.seq = ++node.seq;
    self.cpus = static_cast<int>(node.spec.cores);
    self.capacity = node.spec.capacity();
    self.speed = node.spec.speed;
    self.demand = node.demand();
    self.jobs_running = static_cast<int>(node.jobs.size());
    self.mem_limit_bytes = node.spec.mem_limit_bytes;
    self.mem_used_bytes = node.mem_used;
    self.mem_total_bytes = node.spec.mem_limit_bytes;
    self.mem_free_bytes =
        node.spec.mem_limit_bytes - std::min(node.mem_used, node.spec.mem_limit_bytes);
    if (!SimMapsLikeTheAgent(self)) {  // the samples' mapping (SimNodeState) relies on it
      std::fprintf(stderr, "tern-sim: a published vector lists jobs or a name\n");
      std::abort();
    }
    node.gossip->SetLocalShared(LoadPool::Unowned(vector.get()), now);
    pool.Retire(std::move(node.published), now);
    node.published = std::move(vector);
  }

  // The node's windows: their bytes and messages to `out`, their entries to `part`'s buffer.
  void Send(Node& node, Millis now, std::uint32_t index, Part& part, ChunkOut& out) {
    std::bernoulli_distribution lost(options_.gossip_loss);
    node.gossip->TickShared(now, ids_, *node.rng, part.sends);
    for (const auto& send : part.sends) {
      out.bytes += kMessageOverheadBytes;
      for (const auto& entry : send.entries) out.bytes += EstimateEntryBytes(entry.jobs_running);
      if (lost(*node.rng)) continue;
      out.messages.push_back(Message{static_cast<std::uint32_t>(send.to - 1), index, node.id,
                                     static_cast<std::uint32_t>(part.used),
                                     static_cast<std::uint32_t>(send.entries.size())});
      for (const auto& entry : send.entries) {
        if (part.used < part.entries.size()) {
          part.entries[part.used] = entry;
        } else {
          part.entries.push_back(entry);
        }
        ++part.used;
      }
    }
  }

  // Node i's Balancer decides on its jobs and mine.sample (taken for it); the jobs it moves leave
  // now, their flights go to `moves` (they reach other nodes: FirstPass dispatches them).
  void Balance(std::uint32_t i, double t, Part& mine, std::vector<Flight>& moves) {
    const Millis now = ToMillis(t);
    Node& node = nodes_[i];
    auto& local = mine.local;
    local.clear();
    const double rate =
        node.spec.speed * std::min(1.0, node.spec.cores / static_cast<double>(node.jobs.size()));
    for (auto index : node.jobs) {
      const Job& job = jobs_[index];
      balancer::LocalJob l;
      l.id = job.id;
      l.runnable = 1;
      l.cpu_share = rate;
      l.age_s = t - job.spec.arrival_s;
      l.rss_bytes = job.spec.rss_bytes;
      local.push_back(std::move(l));
    }
    balancer::MigrationCosts costs{node.spec.link_bytes_per_s, options_.freeze_s, 1};
    auto decisions = node.balancer->Decide(View(i, mine.sample), local, costs, node.outgoing, now);
    for (const auto& move : decisions.migrate) {
      auto it = std::find_if(node.jobs.begin(), node.jobs.end(),
                             [&](std::uint32_t j) { return jobs_[j].id == move.job; });
      if (it == node.jobs.end() || move.to == 0 || move.to > nodes_.size()) continue;
      const std::uint32_t job = *it;
      const auto to = static_cast<std::uint32_t>(move.to - 1);
      RemoveFrom(job, i);
      const double link = std::min(node.spec.link_bytes_per_s, nodes_[to].spec.link_bytes_per_s);
      const double cost = static_cast<double>(jobs_[job].spec.rss_bytes) / link + options_.freeze_s;
      moves.push_back(Flight{t + cost, job, i, to});
      ++node.outgoing;
      node.balancer->OnMigrationStarted(move.job, move.to, now);
    }
  }

  void SampleViews(Millis now) {
    for (int k = 0; k < 20; ++k) {
      const auto index = rng_() % nodes_.size();
      if (!observed_[index]) {  // Observed() draws what this does
        std::fprintf(stderr, "tern-sim: a view sampled for the report was not kept whole\n");
        std::abort();
      }
      const auto& node = nodes_[index];
      if (!node.gossip->VectorsMatch()) {  // LoadPool's contract: no vector reused while held
        std::fprintf(stderr, "tern-sim: a pooled load vector was reused while a view held it\n");
        std::abort();
      }
      for (const auto& entry : node.gossip->View(now)) {
        if (entry.load.node_id == node.id) continue;
        view_age_sum_ += static_cast<double>(entry.age.count());
        ++view_entries_;
      }
      node.gossip->VisitFreshest(now, options_.sample, [&](const LoadVector&, Millis age) {
        sample_age_sum_ += static_cast<double>(age.count());
        ++sample_entries_;
      });
      ++view_samples_;
    }
  }

  SimOptions options_;
  Policy policy_;
  Workload workload_;
  std::mt19937_64 rng_;
  std::vector<Node> nodes_;
  std::vector<std::uint64_t> ids_;
  // The nodes whose whole gossip view the report reads (Observed); the others keep what their
  // windows and samples read (ReadViewMax).
  std::vector<bool> observed_;
  // When each node next ticks and balances, packed: the per-step scans read 16 KB per thousand
  // nodes instead of every Node.
  std::vector<double> next_gossip_, next_balance_;
  // The step during which each node's first job finishes (Schedule), packed for Progress's scan.
  static constexpr std::uint32_t kNever = 0xffffffff;
  std::vector<std::uint32_t> due_;
  std::vector<double> times_;  // of the steps, and the time after the last
  std::size_t step_ = 0;       // the current step: times_[step_]
  // nodes_[i].gossip.get(), packed: deliveries and samples reach a Gossip without a Node's line.
  std::vector<Gossip*> gossips_;
  std::vector<Job> jobs_;
  std::vector<std::uint32_t> free_;
  std::vector<Flight> flights_;
  std::vector<Message> inbox_, outbox_;
  Workers workers_;
  std::deque<Part> parts_;  // one per worker (a deque: a Part does not copy)
  // The nodes that balanced at the last step, in order (StepNodes lists them, FirstPass runs
  // their decisions).
  std::vector<std::uint32_t> balance_due_;
  // FirstPass's chunks (Bucket): the messages, arrivals and decisions of each; the moves each
  // decided; the new jobs' slots and the starts on other nodes, by arrival.
  std::vector<std::uint32_t> message_order_, message_begin_, arrival_order_, arrival_begin_;
  std::vector<std::uint32_t> decision_order_, decision_begin_;
  std::vector<ChunkOut> chunk_out_;  // Chunks() of them
  std::vector<std::uint32_t> new_jobs_;
  // StepNodes's: the flights that end during the step, and their chunks (Bucket); the targets
  // of the flights dispatched since the last StepNodes (Dispatch), and their chunks.
  std::vector<Flight> landing_;
  std::vector<std::uint32_t> landing_order_, landing_begin_;
  std::vector<std::uint32_t> arriving_, arriving_order_, arriving_begin_;
  std::vector<std::optional<Flight>> starts_;
  mutable std::vector<std::uint32_t> fill_;
  std::uint64_t next_job_id_ = 1;
  std::uint64_t started_ = 0, migrations_ = 0, gossip_bytes_ = 0, remote_starts_ = 0;
  FinishedJobs finished_;
  double next_view_sample_ = 60;
  double view_age_sum_ = 0;
  std::uint64_t view_entries_ = 0, view_samples_ = 0;
  double sample_age_sum_ = 0;
  std::uint64_t sample_entries_ = 0;
};

}  // namespace

std::string ToString(Policy policy) {
  switch (policy) {
    case Policy::kNone:
      return "none";
    case Policy::kRandom:
      return "random";
    case Policy::kLeastLoaded:
      return "least-loaded";
    case Policy::kTern:
      return "tern";
    case Policy::kAgeOnly:
      return "age-only";
    case Policy::kIdeal:
      return "ideal";
  }
  return "?";
}

bool ParsePolicy(const std::string& name, Policy& policy) {
  for (auto p : {Policy::kNone, Policy::kRandom, Policy::kLeastLoaded, Policy::kTern,
                 Policy::kAgeOnly, Policy::kIdeal}) {
    if (ToString(p) == name) {
      policy = p;
      return true;
    }
  }
  return false;
}

std::size_t EstimateEntryBytes(int jobs) {
  // {"load":{...22 fields...},"age_ms":N,"dead":false}: ~520 bytes with real names, addresses
  // and figures; each job {"job_id":...,"cpu_share":...,...,"peers":[]} ~140 more.
  return 520 + 140 * static_cast<std::size_t>(std::max(0, jobs));
}

SimResult RunSim(const SimOptions& options, Policy policy) {
  if (policy == Policy::kIdeal) return RunPooled(options);
  Sim sim(options, policy);
  return sim.Run();
}

}  // namespace tern::sim
