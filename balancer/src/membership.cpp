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
  members_.emplace(options_.self.node_id, std::move(self));
}

void MembershipView::SetState(Member& member, MemberState to, Actions& actions) {
  if (member.info.state == to) return;
  actions.push_back(
      StateChangedAction{member.info.node_id, member.info.name, member.info.state, to});
  member.info.state = to;
}

void MembershipView::Evaluate(Member& member, Millis now, Actions& actions) {
  const Millis silent = now - member.info.last_heard;
  if (silent >= options_.dead_after) {
    SetState(member, MemberState::kDead, actions);
  } else if (silent >=
                 options_.suspect_after + (member.direct ? Millis{0} : options_.gossip_grace) ||
             member.info.last_heard < member.broken_at) {
    if (member.info.state == MemberState::kAlive) SetState(member, MemberState::kSuspect, actions);
  } else {
    SetState(member, MemberState::kAlive, actions);
  }
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
  member.direct = true;
  Evaluate(member, now, actions);
  return actions;
}

MembershipView::Actions MembershipView::OnHeartbeat(std::uint64_t node_id, Millis now) {
  Actions actions;
  auto found = members_.find(node_id);
  if (found == members_.end() || node_id == options_.self.node_id) return actions;
  found->second.info.last_heard = now;
  found->second.direct = true;
  Evaluate(found->second, now, actions);
  return actions;
}

MembershipView::Actions MembershipView::OnPeerDown(std::uint64_t node_id, Millis now) {
  Actions actions;
  auto found = members_.find(node_id);
  if (found == members_.end() || node_id == options_.self.node_id) return actions;
  found->second.broken_at = now;
  if (found->second.info.last_heard >= now) found->second.info.last_heard = now - Millis{1};
  Evaluate(found->second, now, actions);
  return actions;
}

MembershipView::Actions MembershipView::OnGossipEntry(const MemberIdentity& who, Millis sampled_at,
                                                      bool dead, Millis now) {
  Actions actions;
  if (who.node_id == 0 || who.node_id == options_.self.node_id) return actions;
  auto [it, inserted] = members_.try_emplace(who.node_id);
  Member& member = it->second;
  if (inserted) {
    member.info.node_id = who.node_id;
    member.info.state = MemberState::kSuspect;  // heard of: alive is reported when fresh
    member.info.last_heard = sampled_at;
  }
  if (!who.name.empty()) member.info.name = who.name;
  if (!who.address.empty()) member.info.address = who.address;
  if (!who.api_address.empty()) member.info.api_address = who.api_address;
  if (!dead && sampled_at > member.info.last_heard) {
    member.info.last_heard = sampled_at;
    member.direct = false;
  }
  if (dead && now - member.info.last_heard >= options_.suspect_after) {
    SetState(member, MemberState::kDead, actions);
    return actions;
  }
  if (member.info.state == MemberState::kDead && member.info.last_heard != sampled_at) {
    return actions;  // a dead member comes back only with a sample newer than what we had
  }
  Evaluate(member, now, actions);
  return actions;
}

void MembershipView::OnLinkIdleClosed(std::uint64_t node_id) {
  if (auto found = members_.find(node_id); found != members_.end()) found->second.direct = false;
}

MembershipView::Actions MembershipView::Tick(Millis now) {
  Actions actions;
  for (auto& [id, member] : members_) {
    if (id == options_.self.node_id) continue;
    Evaluate(member, now, actions);
  }
  return actions;
}

std::vector<MemberInfo> MembershipView::Members() const {
  std::vector<MemberInfo> all;
  for (const auto& [id, member] : members_) all.push_back(member.info);
  return all;
}

std::optional<MemberInfo> MembershipView::NextDeadToDial(std::uint64_t after) const {
  const auto dialable = [](const Member& member) {
    return member.info.state == MemberState::kDead && !member.info.address.empty();
  };
  for (auto it = members_.upper_bound(after); it != members_.end(); ++it) {
    if (dialable(it->second)) return it->second.info;
  }
  for (const auto& [id, member] : members_) {
    if (id > after) break;
    if (dialable(member)) return member.info;
  }
  return std::nullopt;
}

}  // namespace tern::balancer
