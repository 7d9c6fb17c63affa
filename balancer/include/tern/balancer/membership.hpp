// MembershipView: who is in the cluster and whether each member is alive, as a state machine
// per member driven by events; it does no I/O and reads no clock (time is an argument).
//
// States of a member:   frame from it / fresh gossip entry / peer up
//            ┌──────────────────────────────────────────┐
//            ▼                                          │
//         kAlive ──(nothing fresher than suspect_after)──► kSuspect ──(dead_after)──► kDead
//            └────────────(peer down: at once)─────────►┘
//
// Liveness needs no link to every node: a member is alive while the freshest sign of it is
// younger than suspect_after — a frame on a link (OnHeartbeat), or a gossip entry about it,
// whose age says when its origin sampled it (OnGossipEntry). A link that breaks makes the
// member suspect at once; only signs newer than the break revive it. A death notice (another
// member's view saw it die) makes a member dead unless this view has fresh signs of it.
// Members are learned from links and gossip entries; they are never dialled from here.
// Actions: StateChangedAction (for logs, events and the IPC layer). Self is always alive.
//
// Thread-safety: not thread-safe; the agent drives it from one thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace tern::balancer {

enum class MemberState { kAlive, kSuspect, kDead };
std::string_view ToString(MemberState state);

struct MemberIdentity {
  std::uint64_t node_id = 0;
  std::string name;
  std::string address;
  std::string api_address;
};

struct MemberInfo {
  std::uint64_t node_id = 0;
  std::string name;
  std::string address;
  std::string api_address;
  MemberState state = MemberState::kSuspect;
  std::chrono::milliseconds last_heard{0};
};

struct StateChangedAction {
  std::uint64_t node_id = 0;
  std::string name;
  MemberState from;
  MemberState to;
};
using MembershipAction = std::variant<StateChangedAction>;

struct MembershipOptions {
  MemberIdentity self;
  std::chrono::milliseconds suspect_after{3000};
  std::chrono::milliseconds dead_after{10000};
  // Gossip news is late by a few rounds (push gossip to random peers): a member whose freshest
  // sign came only through gossip turns suspect this much later (dead_after is unchanged).
  std::chrono::milliseconds gossip_grace{0};
};

class MembershipView {
 public:
  using Millis = std::chrono::milliseconds;
  using Actions = std::vector<MembershipAction>;

  explicit MembershipView(MembershipOptions options);

  Actions OnPeerUp(const MemberIdentity& peer, Millis now);
  Actions OnHeartbeat(std::uint64_t node_id, Millis now);
  Actions OnPeerDown(std::uint64_t node_id, Millis now);
  // The link to it was closed by agreement (idle): not a failure, but from now on its news
  // comes through gossip only (and gets gossip_grace).
  void OnLinkIdleClosed(std::uint64_t node_id);
  // A gossip entry about `member`, sampled at `sampled_at` on our clock (now - its age);
  // `dead`: a death notice.
  Actions OnGossipEntry(const MemberIdentity& member, Millis sampled_at, bool dead, Millis now);
  Actions Tick(Millis now);

  // Every member, self included, ordered by node id.
  std::vector<MemberInfo> Members() const;
  // The dead member to dial next, in turn: the first by node id after `after` (the one dialled
  // last), else the first; none without a dead member that advertised an address. A node dead
  // to everyone may come back knowing nobody (a seed has no seeds of its own): only a dial
  // from the others brings it back into the cluster.
  std::optional<MemberInfo> NextDeadToDial(std::uint64_t after) const;

 private:
  struct Member {
    MemberInfo info;
    Millis broken_at{-1'000'000'000};  // the last link break: older signs do not revive
    bool direct = false;               // last_heard came from a frame or link, not gossip
  };

  void SetState(Member& member, MemberState to, Actions& actions);
  void Evaluate(Member& member, Millis now, Actions& actions);

  MembershipOptions options_;
  std::map<std::uint64_t, Member> members_;
};

}  // namespace tern::balancer
