// tern::PortWriter: data messages to one port as trains (JobOp::kSendBatch), several on their
// way at once.
#include <tern/ipc.hpp>

#include "channel_impl.hpp"

namespace tern {

namespace {

using ipc::JobOp;
using ipc::WireReader;
using ipc::WireWriter;

// The kSendBatch header: [u8 policy][u32 timeout][u32 notify name][u32 count].
constexpr std::size_t kCountOffset = 1 + 4 + 4;
constexpr std::size_t kHeaderSize = kCountOffset + 4;

void PutU32(std::string& out, std::size_t at, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) out[at + i] = static_cast<char>(v >> (24 - 8 * i));
}

}  // namespace

PortWriter::PortWriter(Channel channel, std::uint32_t port)
    : PortWriter(std::move(channel), port, Options{}) {}

PortWriter::PortWriter(Channel channel, std::uint32_t port, Options options)
    : channel_(std::move(channel)), port_(port), options_(options) {
  if (options_.window == 0) options_.window = 1;
  if (options_.train_messages == 0) options_.train_messages = 1;
  StartTrain();
}

PortWriter::~PortWriter() { (void)flush(); }

void PortWriter::StartTrain() {
  train_.clear();
  train_count_ = 0;
  WireWriter header;
  // A stream never drops: a full queue holds the train at the port's home until there is room.
  header.U8(static_cast<std::uint8_t>(FullPolicy::kWait));
  header.U32(ipc::kWaitForever);
  header.U32(0);  // no notify port
  header.U32(0);  // the count, filled in by Ship
  train_ = header.Take();
}

IpcResult<void> PortWriter::write(std::string_view bytes, std::uint32_t id) {
  if (error_) return *error_;
  // WireWriter::WriteMessage's layout of a copy-send message with one bytes item, written
  // without building a Message.
  WireWriter out;
  std::swap(out.out(), train_);
  out.U32(port_);
  out.U8(static_cast<std::uint8_t>(Disposition::kCopySend));
  out.U32(0);
  out.U8(static_cast<std::uint8_t>(Disposition::kNone));
  out.U32(id);
  out.U32(1);
  out.U8(static_cast<std::uint8_t>(ItemKind::kBytes));
  out.Bytes(bytes);
  std::swap(out.out(), train_);
  return Added();
}

IpcResult<void> PortWriter::write(const Message& message) {
  if (error_) return *error_;
  for (const Item& item : message.items) {
    if (item.kind != ItemKind::kBytes && item.kind != ItemKind::kOutOfLine) {
      return IpcError{JobStatus::kBadRequest,
                      "PortWriter carries data only (bytes, out-of-line); send rights with send"};
    }
  }
  Message copy_send = message;
  copy_send.destination = port_;
  copy_send.destination_disposition = Disposition::kCopySend;
  copy_send.reply = 0;
  copy_send.reply_disposition = Disposition::kNone;
  WireWriter out;
  std::swap(out.out(), train_);
  out.WriteMessage(copy_send);
  std::swap(out.out(), train_);
  return Added();
}

// One more message is in the train: it leaves when full.
IpcResult<void> PortWriter::Added() {
  ++train_count_;
  ++written_;
  if (train_count_ >= options_.train_messages || train_.size() >= options_.train_bytes) {
    return Ship();
  }
  return {};
}

IpcResult<void> PortWriter::Ship() {
  if (train_count_ == 0) return {};
  while (in_flight_.size() >= options_.window && !error_) CollectOldest();
  if (error_) return *error_;
  PutU32(train_, kCountOffset, static_cast<std::uint32_t>(train_count_));
  auto request = channel_.impl_->Post(JobOp::kSendBatch, train_);
  StartTrain();
  if (!request) {
    error_ = request.error();
    return *error_;
  }
  in_flight_.push_back(*request);
  return {};
}

// Waits for the oldest train's answer: [u32 accepted][u16 status][string why].
void PortWriter::CollectOldest() {
  const std::uint32_t request = in_flight_.front();
  in_flight_.pop_front();
  auto reply = channel_.impl_->Collect(request);
  if (!reply) {
    if (!error_) error_ = reply.error();
    return;
  }
  WireReader reader(reply->body);
  auto taken = reader.U32();
  auto status = reader.U16();
  auto why = reader.Bytes();
  if (!why) {
    if (!error_) error_ = IpcError{JobStatus::kBadRequest, "malformed answer to a train"};
    return;
  }
  accepted_ += *taken;
  if (static_cast<JobStatus>(*status) != JobStatus::kOk && !error_) {
    error_ = IpcError{static_cast<JobStatus>(*status), std::move(*why)};
  }
}

IpcResult<void> PortWriter::flush() {
  if (!error_) (void)Ship();
  // Every answer is taken, after an error too, so that accepted() is final.
  while (!in_flight_.empty()) CollectOldest();
  if (error_) return *error_;
  return {};
}

}  // namespace tern
