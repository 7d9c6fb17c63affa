// The IPC operations of tern::Channel: encode the body, send the request, decode the reply.
#include <sys/mman.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>

#include "channel_impl.hpp"
#include "direct_send.hpp"
#include "link_direct.hpp"

namespace tern {

namespace libtern {

IpcError Malformed(ipc::JobOp op) {
  return IpcError{JobStatus::kBadRequest, "malformed reply from the agent to op " +
                                              std::to_string(static_cast<unsigned>(op))};
}

IpcResult<std::uint32_t> NameReply(IpcResult<Channel::Impl::Reply> reply, ipc::JobOp op) {
  if (!reply) return reply.error();
  ipc::WireReader reader(reply->body());
  auto name = reader.U32();
  if (!name) return Malformed(op);
  return *name;
}

std::string NameBody(std::uint32_t name) {
  ipc::WireWriter writer;
  writer.U32(name);
  return writer.Take();
}

}  // namespace libtern

namespace {

using ipc::JobOp;
using ipc::WireReader;
using ipc::WireWriter;
using libtern::Malformed;
using libtern::NameBody;
using libtern::NameReply;

IpcResult<void> EmptyReply(IpcResult<Channel::Impl::Reply> reply) {
  if (!reply) return reply.error();
  return {};
}

std::string StringBody(std::string_view text) {
  WireWriter writer;
  writer.Bytes(text);
  return writer.Take();
}

}  // namespace

IpcResult<std::uint32_t> Channel::port_allocate(std::uint32_t queue_limit) const {
  return NameReply(impl_->Request(JobOp::kPortAllocate, NameBody(queue_limit)),
                   JobOp::kPortAllocate);
}

IpcResult<std::uint32_t> Channel::make_send(std::uint32_t receive_name) const {
  return NameReply(impl_->Request(JobOp::kMakeSend, NameBody(receive_name)), JobOp::kMakeSend);
}

IpcResult<void> Channel::deallocate(std::uint32_t name) const {
  libtern::RightLeaves(*impl_, name);
  libtern::LinkEndLeaves(*impl_, name);
  return EmptyReply(impl_->Request(JobOp::kDeallocate, NameBody(name)));
}

IpcResult<RightInfo> Channel::right_info(std::uint32_t name) const {
  auto reply = impl_->Request(JobOp::kRightInfo, NameBody(name));
  if (!reply) return reply.error();
  WireReader reader(reply->body());
  auto type = reader.U8();
  auto refs = reader.U32();
  auto home = reader.U64();
  auto serial = reader.U64();
  if (!serial) return Malformed(JobOp::kRightInfo);
  return RightInfo{static_cast<RightType>(*type), *refs, *home, *serial};
}

IpcResult<PortStatus> Channel::port_status(std::uint32_t receive_name) const {
  auto reply = impl_->Request(JobOp::kPortStatus, NameBody(receive_name));
  if (!reply) return reply.error();
  WireReader reader(reply->body());
  auto queued = reader.U32();
  auto limit = reader.U32();
  auto send_refs = reader.U32();
  if (!send_refs) return Malformed(JobOp::kPortStatus);
  return PortStatus{*queued, *limit, *send_refs};
}

IpcResult<void> Channel::request_notification(std::uint32_t name, NotificationKind kind,
                                              std::uint32_t notify_port) const {
  WireWriter writer;
  writer.U32(name);
  writer.U8(static_cast<std::uint8_t>(kind));
  writer.U32(notify_port);
  return EmptyReply(impl_->Request(JobOp::kRequestNotification, writer.Take()));
}

IpcResult<void> Channel::send(const Message& message, FullPolicy policy, Timeout timeout,
                              std::uint32_t notify_port) const {
  libtern::LinkEndsLeaveIn(*impl_, message);
  if (auto direct = libtern::SendDirect(impl_, message, policy, timeout, notify_port)) {
    return std::move(*direct);
  }
  libtern::BeforeAgentSendOf(*impl_, message);
  // EncodeSendRequest's layout; large data items are written from where they are.
  WireWriter writer(/*share_data=*/true);
  writer.WriteMessage(message);
  writer.U8(static_cast<std::uint8_t>(policy));
  writer.U32(libtern::TimeoutMs(timeout));
  writer.U32(notify_port);
  libtern::NoteAgentSend(*impl_, message.destination);
  return EmptyReply(impl_->Request(JobOp::kSend, libtern::Pieces(writer)));
}

IpcResult<Message> Channel::receive(std::uint32_t port, Timeout timeout) const {
  WireWriter writer;
  writer.U32(port);
  writer.U32(libtern::TimeoutMs(timeout));
  auto reply = impl_->Request(JobOp::kReceive, writer.Take());
  if (!reply) return reply.error();
  WireReader reader(reply->body());
  auto message = reader.ReadMessage();
  if (!message) return Malformed(JobOp::kReceive);
  return std::move(*message);
}

namespace {

// A send_many can go as trains (JobOp::kSendBatch) when every message is data to one port.
bool FitsTrains(const std::vector<Message>& messages) {
  if (messages.size() < 2) return false;
  for (const Message& message : messages) {
    if (message.destination != messages.front().destination || message.reply != 0 ||
        message.destination_disposition != Disposition::kCopySend) {
      return false;
    }
    for (const Item& item : message.items) {
      if (item.kind != ItemKind::kBytes && item.kind != ItemKind::kOutOfLine) return false;
    }
  }
  return true;
}

constexpr std::size_t kTrainMessages = 8192;
constexpr std::size_t kTrainBytes = 1u << 20;

}  // namespace

IpcResult<void> Channel::send_many(const std::vector<Message>& messages, FullPolicy policy,
                                   Timeout timeout, std::size_t* accepted) const {
  if (accepted) *accepted = 0;
  if (messages.empty()) return {};
  for (const Message& message : messages) {
    libtern::LinkEndsLeaveIn(*impl_, message);
    libtern::BeforeAgentSendOf(*impl_, message);
    libtern::NoteAgentSend(*impl_, message.destination);
  }
  if (FitsTrains(messages)) return SendTrains(messages, policy, timeout, accepted);
  std::vector<std::string> bodies;
  bodies.reserve(messages.size());
  for (const Message& message : messages) {
    ipc::SendRequest request;
    request.message = message;
    request.policy = policy;
    request.timeout_ms = libtern::TimeoutMs(timeout);
    bodies.push_back(ipc::EncodeSendRequest(request));
  }
  auto results = impl_->RequestMany(JobOp::kSend, bodies);
  std::size_t ok = 0;
  std::optional<IpcError> first_error;
  for (auto& result : results) {
    if (result) {
      ++ok;
    } else if (!first_error) {
      first_error = result.error();
    }
  }
  if (accepted) *accepted = ok;
  if (first_error) return *first_error;
  return {};
}

// Trains of up to kTrainMessages messages / kTrainBytes bytes, one request each. Waiting
// senders pipeline every train in one write; with kFail or kNotify the trains go one at a time
// and the first refusal ends the call, so that nothing after a refused message is sent.
std::string libtern::TrainHeader(FullPolicy policy, std::uint32_t timeout_ms, std::uint32_t count) {
  WireWriter train;
  train.U8(static_cast<std::uint8_t>(policy));
  train.U32(timeout_ms);
  train.U32(0);  // no notify port
  train.U32(count);
  return train.Take();
}

std::string libtern::TrainRequest(FullPolicy policy, std::uint32_t timeout_ms, std::uint32_t count,
                                  std::string_view messages) {
  return TrainHeader(policy, timeout_ms, count) + std::string(messages);
}

std::vector<std::string_view> libtern::Pieces(WireWriter& writer) {
  std::vector<std::string_view> pieces;
  ipc::ForEachPiece(
      writer.out(), writer.shared(), [&](std::string_view bytes) { pieces.push_back(bytes); },
      [&](const ipc::SharedSpan& span) { pieces.push_back(span.bytes); });
  return pieces;
}

IpcResult<libtern::TrainAnswer> libtern::ReadTrainAnswer(IpcResult<Channel::Impl::Reply> reply) {
  if (!reply) return reply.error();
  WireReader reader(reply->body());
  auto taken = reader.U32();
  auto status = reader.U16();
  auto why = reader.Bytes();
  if (!why) return Malformed(JobOp::kSendBatch);
  TrainAnswer answer{*taken, std::nullopt};
  if (static_cast<JobStatus>(*status) != JobStatus::kOk) {
    answer.refusal = IpcError{static_cast<JobStatus>(*status), std::move(*why)};
  }
  return answer;
}

IpcResult<void> Channel::SendTrains(const std::vector<Message>& messages, FullPolicy policy,
                                    Timeout timeout, std::size_t* accepted) const {
  std::vector<std::string> trains;
  for (std::size_t first = 0; first < messages.size();) {
    WireWriter encoded;
    std::size_t count = 0, bytes = 0;
    while (first + count < messages.size() && count < kTrainMessages && bytes < kTrainBytes) {
      const Message& message = messages[first + count];
      encoded.WriteMessage(message);
      bytes += message.ByteSize() + 16;
      ++count;
    }
    trains.push_back(libtern::TrainRequest(policy, libtern::TimeoutMs(timeout),
                                           static_cast<std::uint32_t>(count), encoded.out()));
    first += count;
  }
  std::size_t ok = 0;
  const auto tally = [&](IpcResult<Impl::Reply>& result) -> std::optional<IpcError> {
    auto answer = libtern::ReadTrainAnswer(std::move(result));
    if (!answer) return answer.error();
    ok += answer->accepted;
    return std::move(answer->refusal);
  };
  std::optional<IpcError> first_error;
  if (policy == FullPolicy::kWait) {
    auto results = impl_->RequestMany(JobOp::kSendBatch, trains);
    for (auto& result : results) {
      auto error = tally(result);
      if (error && !first_error) first_error = std::move(error);
    }
  } else {
    for (const std::string& train : trains) {
      auto result = impl_->Request(JobOp::kSendBatch, train);
      first_error = tally(result);
      if (first_error) break;
    }
  }
  if (accepted) *accepted = ok;
  if (first_error) return *first_error;
  return {};
}

IpcResult<std::vector<Message>> Channel::receive_many(std::uint32_t port, std::uint32_t max,
                                                      Timeout timeout) const {
  WireWriter writer;
  writer.U32(port);
  writer.U32(libtern::TimeoutMs(timeout));
  writer.U32(max == 0 ? 1 : max);
  auto reply = impl_->Request(JobOp::kReceiveMany, writer.Take());
  if (!reply) return reply.error();
  WireReader reader(reply->body());
  auto count = reader.U32();
  if (!count) return Malformed(JobOp::kReceiveMany);
  std::vector<Message> messages;
  messages.reserve(*count);
  for (std::uint32_t i = 0; i < *count; ++i) {
    auto message = reader.ReadMessage();
    if (!message) return Malformed(JobOp::kReceiveMany);
    messages.push_back(std::move(*message));
  }
  return messages;
}

IpcResult<Message> Channel::send_receive(const Message& message, std::uint32_t port,
                                         Timeout receive_timeout, FullPolicy policy,
                                         Timeout send_timeout) const {
  libtern::LinkEndsLeaveIn(*impl_, message);
  libtern::BeforeAgentSendOf(*impl_, message);
  if (auto direct = libtern::SendReceiveDirect(*this, impl_, message, port, receive_timeout, policy,
                                               send_timeout)) {
    return std::move(*direct);
  }
  WireWriter writer(/*share_data=*/true);
  writer.U32(port);
  writer.U32(libtern::TimeoutMs(receive_timeout));
  writer.WriteMessage(message);  // then EncodeSendRequest's tail
  writer.U8(static_cast<std::uint8_t>(policy));
  writer.U32(libtern::TimeoutMs(send_timeout));
  writer.U32(0);
  libtern::NoteAgentSend(*impl_, message.destination);
  auto reply = impl_->Request(JobOp::kSendReceive, libtern::Pieces(writer));
  if (!reply) return reply.error();
  WireReader reader(reply->body());
  auto received = reader.ReadMessage();
  if (!received) return Malformed(JobOp::kSendReceive);
  return std::move(*received);
}

IpcResult<void> Channel::name_register(std::string_view name, std::uint32_t right) const {
  WireWriter writer;
  writer.Bytes(name);
  writer.U32(right);
  return EmptyReply(impl_->Request(JobOp::kNameRegister, writer.Take()));
}

IpcResult<std::uint32_t> Channel::name_lookup(std::string_view name) const {
  auto found = NameReply(impl_->Request(JobOp::kNameLookup, StringBody(name)), JobOp::kNameLookup);
  if (found) impl_->NoteLookup(*found, std::string(name));
  return found;
}

IpcResult<void> Channel::name_unregister(std::string_view name) const {
  return EmptyReply(impl_->Request(JobOp::kNameUnregister, StringBody(name)));
}

IpcResult<LinkEnds> Channel::link_create() const {
  auto reply = impl_->Request(JobOp::kLinkCreate, std::string_view());
  if (!reply) return reply.error();
  WireReader reader(reply->body());
  auto first = reader.U32();
  auto second = reader.U32();
  if (!second) return Malformed(JobOp::kLinkCreate);
  return LinkEnds{*first, *second};
}

IpcResult<OpHandle> Channel::link_send(std::uint32_t end, const Message& message) const {
  return libtern::LinkSend(impl_, end, message);
}

IpcResult<OpHandle> Channel::link_receive(std::uint32_t end) const {
  return libtern::LinkReceive(impl_, end);
}

IpcResult<OpResult> Channel::wait(OpHandle handle, Timeout timeout) const {
  return libtern::LinkWait(impl_, handle, timeout);
}

IpcResult<std::optional<OpResult>> Channel::poll(OpHandle handle) const {
  return libtern::LinkPoll(impl_, handle);
}

IpcResult<void> Channel::cancel(OpHandle handle) const {
  return libtern::LinkCancel(impl_, handle);
}

IpcResult<std::uint32_t> Channel::region_create(std::uint64_t size) const {
  WireWriter writer;
  writer.U64(size);
  return NameReply(impl_->Request(JobOp::kRegionCreate, writer.Take()), JobOp::kRegionCreate);
}

IpcResult<Region> Channel::region_map(std::uint32_t name) const {
  auto reply = impl_->Request(JobOp::kRegionMap, NameBody(name));
  if (!reply) return reply.error();
  WireReader reader(reply->body());
  auto size = reader.U64();
  if (!size) return Malformed(JobOp::kRegionMap);
  if (!reply->fd.valid()) {
    return IpcError{JobStatus::kBadRequest, "the agent's region_map reply carried no fd"};
  }
  if (*size == 0) return Region();
  // Touching pages past the end of the file would SIGBUS the job: check before mapping.
  struct stat info {};
  if (::fstat(reply->fd.get(), &info) != 0 || static_cast<std::uint64_t>(info.st_size) < *size) {
    return IpcError{JobStatus::kBadRequest, "the region's memfd is smaller than its size"};
  }
  void* data = ::mmap(nullptr, *size, PROT_READ | PROT_WRITE, MAP_SHARED, reply->fd.get(), 0);
  if (data == MAP_FAILED) {
    return IpcError{JobStatus::kTooLarge,
                    std::string("mmap of the region failed: ") + std::strerror(errno)};
  }
  // The mapping keeps the memfd alive; the fd itself closes with the reply.
  return Region(data, static_cast<std::size_t>(*size));
}

namespace {

IpcResult<UniqueFd> FdReply(IpcResult<Channel::Impl::Reply> reply, JobOp op) {
  if (!reply) return reply.error();
  if (!reply->fd.valid()) {
    return IpcError{
        JobStatus::kBadRequest,
        "the agent's reply to op " + std::to_string(static_cast<unsigned>(op)) + " carried no fd"};
  }
  return std::move(reply->fd);
}

}  // namespace

IpcResult<UniqueFd> libtern::DirectOpen(Channel::Impl& impl, std::uint32_t send_name) {
  return FdReply(impl.Request(JobOp::kDirectOpen, NameBody(send_name)), JobOp::kDirectOpen);
}

IpcResult<std::uint32_t> libtern::PostDirectAccept(Channel::Impl& impl, std::uint32_t receive_name,
                                                   Timeout timeout) {
  WireWriter writer;
  writer.U32(receive_name);
  writer.U32(libtern::TimeoutMs(timeout));
  return impl.Post(JobOp::kDirectAccept, writer.Take());
}

IpcResult<UniqueFd> libtern::CollectDirectAccept(Channel::Impl& impl, std::uint32_t request) {
  return FdReply(impl.Collect(request), JobOp::kDirectAccept);
}

IpcResult<UniqueFd> libtern::DirectAccept(Channel::Impl& impl, std::uint32_t receive_name,
                                          Timeout timeout) {
  auto request = PostDirectAccept(impl, receive_name, timeout);
  if (!request) return request.error();
  return CollectDirectAccept(impl, *request);
}

// Region ------------------------------------------------------------------------------------

Region& Region::operator=(Region&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) ::munmap(data_, size_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

Region::~Region() {
  if (data_ != nullptr) ::munmap(data_, size_);
}

}  // namespace tern
