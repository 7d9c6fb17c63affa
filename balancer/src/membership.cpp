#include "tern/balancer/membership.hpp"

namespace tern::balancer {

std::string_view ToString(MemberState state) {
  switch (state) {
    case MemberState::kAlive:
      return "alive";
    case MemberState::kSuspect:
      return "suspect";
    case MemberState::kDead:
      return "dead";
  }
  return "unknown";
}

MembershipView::MembershipView(MembershipOptions options) : options_(std::move(options)) {
  Member self;
  self.info = {options_.self.node_id,     options_.self.name,  options_.self.address,
               options_.self.api_address, MemberState::kAlive, Millis{0}};
  self.linked = true;
  members_.emplace(options_.self.node_id, std::move(self));
}

void MembershipView::SetState(Member& member, MemberState to, Actions& actions) {
  if (member.info.state == to) return;
  actions.push_back(
      StateChangedAction{member.info.node_id, member.info.name, member.info.state, to});
  member.info.state = to;
}

void MembershipView::MaybeDial(Member& member, Millis now, Actions& actions) {
  if (member.linked || member.info.address.empty()) return;
  if (member.info.node_id == options_.self.node_id) return;
  if (now - member.last_dial < options_.redial_every) return;
  member.last_dial = now;
  actions.push_back(ConnectAction{member.info.address});
}

MembershipView::Actions MembershipView::OnPeerUp(const MemberIdentity& peer, Millis now) {
  Actions actions;
  if (peer.node_id == options_.self.node_id) return actions;
  auto [it, inserted] = members_.try_emplace(peer.node_id);
  Member& member = it->second;
  if (inserted) member.info.state = MemberState::kSuspect;  // so that "alive" is reported
  member.info.node_id = peer.node_id;
  member.info.name = peer.name;
  if (!peer.address.empty()) member.info.address = peer.address;
  if (!peer.api_address.empty()) member.info.api_address = peer.api_address;
  member.info.last_heard = now;
  member.linked = true;
  SetState(member, MemberState::kAlive, actions);
  return actions;
}

MembershipView::Actions MembershipView::OnHeartbeat(std::uint64_t node_id, Millis now) {
  Actions actions;
  auto found = members_.find(node_id);
  if (found == members_.end() || node_id == options_.self.node_id) return actions;
  found->second.info.last_heard = now;
  SetState(found->second, MemberState::kAlive, actions);
  return actions;
}

MembershipView::Actions MembershipView::OnPeerDown(std::uint64_t node_id, Millis now) {
  Actions actions;
  auto found = members_.find(node_id);
  if (found == members_.end() || node_id == options_.self.node_id) return actions;
  Member& member = found->second;
  member.linked = false;
  if (member.info.state == MemberState::kAlive) SetState(member, MemberState::kSuspect, actions);
  MaybeDial(member, now, actions);
  return actions;
}

MembershipView::Actions MembershipView::OnGossip(const std::vector<MemberInfo>& gossip,
                                                 Millis now) {
  Actions actions;
  for (const auto& info : gossip) {
    if (info.node_id == 0 || info.node_id == options_.self.node_id) continue;
    auto [it, inserted] = members_.try_emplace(info.node_id);
    Member& member = it->second;
    if (inserted) {
      member.info = info;
      member.info.state = MemberState::kSuspect;  // heard of, not heard from
      member.info.last_heard = now;
    } else if (member.info.address.empty()) {
      member.info.address = info.address;
    }
    MaybeDial(member, now, actions);
  }
  return actions;
}

MembershipView::Actions MembershipView::Tick(Millis now) {
  Actions actions;
  for (auto& [id, member] : members_) {
    if (id == options_.self.node_id) continue;
    const Millis silent = now - member.info.last_heard;
    if (silent >= options_.dead_after) {
      SetState(member, MemberState::kDead, actions);
    } else if (silent >= options_.suspect_after && member.info.state == MemberState::kAlive) {
      SetState(member, MemberState::kSuspect, actions);
    }
    MaybeDial(member, now, actions);
  }
  return actions;
}

std::vector<MemberInfo> MembershipView::Members() const {
  std::vector<MemberInfo> all;
  for (const auto& [id, member] : members_) all.push_back(member.info);
  return all;
}

}  // namespace tern::balancer
