// JobRequestSim: the world of the job_request fuzz target, shared with the seed generator
// (make_seeds.cpp) so that seeds are written against exactly what the target plays.
//
// Two PortRouters (nodes 1 and 2, as in tests/ipc/port_router_test.cpp); jobs a and b start
// on node 1, c and d on node 2. Play() takes one Records record; its tag picks the event:
//   tag % 8 == 0..3  a request to router (tag>>3)&1 from job (tag>>4)&3; bytes = the IpcRequest
//                    payload (a job that is not on that router is refused)
//   4  fire the oldest pending timer      5  deliver every frame in flight
//   6  that job ends on that router and a new one attaches under the same name
//   7  that job is exported to the other router and imported there under its own name; with
//      bytes, those bytes are imported instead (junk from a peer)
// Every reply a router sends a job is checked to carry a reply header and kept in replies().
//
// Thread-safety: single-threaded.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <tern/ipc/job_wire.hpp>
#include <tern/ipc/port_router.hpp>
#include <utility>
#include <vector>

#include "fuzz_check.hpp"
#include "fuzz_records.hpp"

namespace tern::fuzz {

// Regions in memory, capped so that a request for a huge one fails as memory exhaustion would
// in the agent rather than making the fuzzer run out of memory.
class SmallRegions : public ipc::RegionStore {
 public:
  bool Create(ipc::ObjectId id, std::uint64_t size) override {
    if (size > kMax) return false;
    bytes_[id] = std::string(size, '\0');
    return true;
  }
  std::optional<std::string> Read(ipc::ObjectId id, std::uint64_t offset,
                                  std::size_t max) override {
    auto it = bytes_.find(id);
    if (it == bytes_.end() || offset > it->second.size()) return std::nullopt;
    return it->second.substr(offset, max);
  }
  bool Write(ipc::ObjectId id, std::uint64_t offset, std::string_view data) override {
    auto it = bytes_.find(id);
    if (it == bytes_.end() || offset > it->second.size() ||
        data.size() > it->second.size() - offset) {
      return false;
    }
    it->second.replace(offset, data.size(), data);
    return true;
  }
  void Destroy(ipc::ObjectId id) override { bytes_.erase(id); }

 private:
  static constexpr std::uint64_t kMax = 1 << 20;
  std::map<ipc::ObjectId, std::string> bytes_;
};

class JobRequestSim {
 public:
  static constexpr const char* kJobs[4] = {"a", "b", "c", "d"};
  enum Event : std::uint8_t { kRequest = 0, kTimer = 4, kDeliver = 5, kRestart = 6, kMove = 7 };
  static std::uint8_t Tag(Event event, int node, int job) {
    return static_cast<std::uint8_t>(event | node << 3 | job << 4);
  }

  JobRequestSim() {
    for (int n = 0; n < 2; ++n) {
      nodes_[n].router.NodeUp(2 - n);  // node 1 sees node 2 and the other way round
      nodes_[n].router.JobAttached(kJobs[2 * n]);
      nodes_[n].router.JobAttached(kJobs[2 * n + 1]);
    }
  }

  // From now on each router keeps its durable state (PortRouter::KeepDurableState), and the
  // sim keeps the journal each would have written (journal()).
  void KeepDurable() {
    for (int n = 0; n < 2; ++n) {
      nodes_[n].router.KeepDurableState();
      durable_ = true;
      Collect(n);
    }
  }
  // The journal file router `n` (0: node 1, 1: node 2) wrote so far, with KeepDurable.
  const std::string& journal(int n) const { return journals_[n]; }

  void Play(const Record& record) {
    const int n = (record.tag >> 3) & 1;
    const std::string job = kJobs[(record.tag >> 4) & 3];
    switch (record.tag % 8) {
      case kTimer:
        if (!timers_.empty()) {
          auto [node, id] = timers_.front();
          timers_.pop_front();
          nodes_[node].router.Timer(id);
          Collect(node);
        }
        break;
      case kDeliver: {
        std::deque<InFlight> now;
        now.swap(frames_);
        for (auto& frame : now) {
          delivered_.push_back(frame.payload);
          (void)nodes_[frame.to].router.NodeFrame(frame.from, frame.payload);
          Collect(frame.to);
        }
        break;
      }
      case kRestart:
        nodes_[n].router.JobGone(job);
        Collect(n);
        nodes_[n].router.JobAttached(job);
        break;
      case kMove: {
        std::string state(record.bytes);
        if (state.empty()) {
          auto exported = nodes_[n].router.ExportJob(job, 2 - n);
          Collect(n);
          if (exported.outcome != ipc::PortRouter::ExportOutcome::kExported) break;
          state = std::move(exported.state);
        }
        (void)nodes_[1 - n].router.ImportJob(job, state);
        Collect(1 - n);
        break;
      }
      default:
        (void)nodes_[n].router.JobRequest(job, record.bytes);
        Collect(n);
        break;
    }
  }

  // Replies to each job, oldest first (the seed generator reads names out of them).
  std::map<std::string, std::vector<std::string>>& replies() { return replies_; }
  // Every IpcRemote payload delivered so far (seeds for the peer_frame target).
  const std::vector<std::string>& delivered() const { return delivered_; }

 private:
  struct Node {
    explicit Node(std::uint64_t id) : router(id, regions) {}
    SmallRegions regions;
    ipc::PortRouter router;
  };
  struct InFlight {
    int to = 0;  // index into nodes_
    std::uint64_t from = 0;
    std::string payload;
  };

  void Collect(int n) {
    ipc::PortRouter::Actions actions = nodes_[n].router.TakeActions();
    for (const auto& reply : actions.replies) {
      std::string whole = reply.Whole();
      FUZZ_CHECK(ipc::ReadJobReplyHeader(whole).has_value(), "a reply to a job without its header");
      auto& kept = replies_[reply.job];
      if (kept.size() < 64) kept.push_back(std::move(whole));
    }
    for (auto& frame : actions.frames) {
      // Only the two nodes exist; a frame to any other is dropped, as without a link.
      if (frame.node == 1 || frame.node == 2) {
        frames_.push_back({static_cast<int>(frame.node - 1), static_cast<std::uint64_t>(n + 1),
                           std::move(frame.payload)});
      }
    }
    for (const auto& timer : actions.timers) timers_.emplace_back(n, timer.id);
    if (durable_) {
      auto write = nodes_[n].router.TakeDurable();
      if (write.rewrite_journal) journals_[n].clear();
      for (const auto& piece : write.journal) journals_[n] += piece;
    }
  }

  Node nodes_[2] = {Node(1), Node(2)};
  std::deque<std::pair<int, std::uint64_t>> timers_;  // node index, timer id
  std::deque<InFlight> frames_;
  std::map<std::string, std::vector<std::string>> replies_;
  std::vector<std::string> delivered_;
  bool durable_ = false;
  std::string journals_[2];
};

}  // namespace tern::fuzz
