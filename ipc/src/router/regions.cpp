// PortRouter, regions.cpp
// Regions: creating and mapping one, and copying a remote region into a local one, a chunk at a
// time, before a message that carries it is delivered.
#include "state.hpp"

namespace tern::ipc {

void PortRouter::State::StartDelivery(const std::shared_ptr<Delivery>& delivery) {
  for (std::size_t i = 0; i < delivery->message.items.size(); ++i) {
    const TransitRight& right = delivery->message.items[i].right;
    if (right.type == RightType::kRegion && right.id.home != self) {
      ++delivery->outstanding;
      const std::uint64_t ticket = NewTicket(Ticket{.kind = TicketKind::kRegionFetch,
                                                    .node = right.id.home,
                                                    .job = delivery->job,
                                                    .object = right.id,
                                                    .delivery = delivery,
                                                    .handle = static_cast<std::uint32_t>(i)});
      Post(right.id.home,
           Envelope{.kind = Remote::kRegionFetch, .ticket = ticket, .object = right.id});
    }
  }
  if (delivery->outstanding == 0) FinishDelivery(delivery);
}

// Puts the rights of a received message into the receiver's table and answers its receive.
void PortRouter::State::FinishDelivery(const std::shared_ptr<Delivery>& delivery) {
  auto job_it = jobs.find(delivery->job);
  TransitMessage& transit = delivery->message;
  if (job_it == jobs.end()) {
    for (auto& [index, copy] : delivery->copied) {
      transit.items[index].right.id = copy;
    }
    return ReleaseTransit(transit);
  }
  Message message =
      Convert(job_it->second, delivery->job, transit, delivery->receive_name, delivery->copied);
  WireWriter out(/*share_data=*/true);
  if (delivery->many) out.U32(1);
  out.WriteMessage(message);
  Reply(delivery->job, delivery->request, out);
}

bool PortRouter::State::NeedsFetch(const TransitMessage& message) const {
  for (const TransitItem& item : message.items) {
    if (item.right.type == RightType::kRegion && item.right.id.home != self) return true;
  }
  return false;
}

void PortRouter::State::OnRegionCreate(const std::string& job_name, JobState& job,
                                       ipc::JobRequest& request, WireReader& in) {
  auto size = in.U64();
  if (!size || *size == 0)
    return Bad(job_name, request, "region_create: size must be at least 1 byte");
  if (*size > limits.max_region_bytes) {
    return Error(job_name, request.id, JobStatus::kOverQuota,
                 "region_create: " + std::to_string(*size) + " bytes is over this node's cap of " +
                     std::to_string(limits.max_region_bytes) +
                     " bytes a region ([ipc] max_region_bytes)");
  }
  const ObjectId id = NewObject();
  if (!store.Create(id, *size)) {
    return Error(job_name, request.id, JobStatus::kUnavailable,
                 "cannot create a region of " + std::to_string(*size) + " bytes");
  }
  regions[id.serial] = Region{*size, 1};
  WireWriter out;
  out.U32(Insert(job, RightType::kRegion, id));
  return Reply(job_name, request.id, JobStatus::kOk, out.out());
}

void PortRouter::State::OnRegionMap(const std::string& job_name, JobState& job,
                                    ipc::JobRequest& request, WireReader& in) {
  auto name = in.U32();
  if (!name) return Bad(job_name, request, "region_map: missing name");
  Entry* entry = Find(job, *name);
  if (!entry || entry->type != RightType::kRegion)
    return Invalid(job_name, request, *name, "a region");
  auto region = regions.find(entry->id.serial);
  if (entry->id.home != self || region == regions.end()) {
    return Error(job_name, request.id, JobStatus::kUnavailable, "the region is gone");
  }
  WireWriter out;
  out.U64(region->second.size);
  actions.replies.push_back(
      {job_name, EncodeJobReply(request.id, JobStatus::kOk, out.out()), entry->id});
  return;
}

void PortRouter::State::HomeRegionFetch(const Envelope& e) {
  // One chunk from offset e.delta, with the region's size.
  auto region = regions.find(e.object.serial);
  const auto offset = static_cast<std::uint64_t>(e.delta);
  std::optional<std::string> bytes;
  if (region != regions.end() && offset < region->second.size) {
    bytes =
        store.Read(e.object, offset,
                   static_cast<std::size_t>(std::min(kRegionChunk, region->second.size - offset)));
  }
  if (!bytes || bytes->empty()) {
    return Respond(e, Envelope{.kind = Remote::kRegionFetchResult,
                               .status = JobStatus::kDeadName,
                               .text = "region gone"});
  }
  return Respond(e, Envelope{.kind = Remote::kRegionFetchResult,
                             .delta = static_cast<std::int64_t>(region->second.size),
                             .text = std::move(*bytes)});
}

}  // namespace tern::ipc
