// MembershipView: who is in the cluster and whether each member is alive, as a state machine
// per member driven by events; it does no I/O and reads no clock (time is an argument).
//
// States of a member:        heartbeat / peer up
//            ┌──────────────────────────────────────────┐
//            ▼                                          │
//         kAlive ──(no heartbeat for suspect_after)──► kSuspect ──(none for dead_after)──► kDead
//            └────────────(peer down: at once)─────────►┘
//
// Events: OnPeerUp (an authenticated link came up), OnHeartbeat, OnPeerDown (the link broke),
// OnGossip (member lists from peers: how we learn of nodes we have no link to), Tick.
// Actions: ConnectAction (dial this address: a member we have no link to; repeated at most
// every `redial_every` per address while it is not alive) and StateChangedAction (for logs and
// events). Self is always alive and never dialled.
//
// Thread-safety: not thread-safe; the agent drives it from one thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
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

struct ConnectAction {
  std::string address;
};
struct StateChangedAction {
  std::uint64_t node_id = 0;
  std::string name;
  MemberState from;
  MemberState to;
};
using MembershipAction = std::variant<ConnectAction, StateChangedAction>;

struct MembershipOptions {
  MemberIdentity self;
  std::chrono::milliseconds suspect_after{3000};
  std::chrono::milliseconds dead_after{10000};
  std::chrono::milliseconds redial_every{2000};
};

class MembershipView {
 public:
  using Millis = std::chrono::milliseconds;
  using Actions = std::vector<MembershipAction>;

  explicit MembershipView(MembershipOptions options);

  Actions OnPeerUp(const MemberIdentity& peer, Millis now);
  Actions OnHeartbeat(std::uint64_t node_id, Millis now);
  Actions OnPeerDown(std::uint64_t node_id, Millis now);
  Actions OnGossip(const std::vector<MemberInfo>& members, Millis now);
  Actions Tick(Millis now);

  // Every member, self included, ordered by node id.
  std::vector<MemberInfo> Members() const;

 private:
  struct Member {
    MemberInfo info;
    bool linked = false;
    Millis last_dial{-1'000'000'000};
  };

  void SetState(Member& member, MemberState to, Actions& actions);
  void MaybeDial(Member& member, Millis now, Actions& actions);

  MembershipOptions options_;
  std::map<std::uint64_t, Member> members_;
};

}  // namespace tern::balancer
