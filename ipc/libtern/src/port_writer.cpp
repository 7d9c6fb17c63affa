// tern::PortWriter: data messages to one port as trains (JobOp::kSendBatch), several on their
// way at once.
#include <tern/ipc.hpp>
#include <tern/ipc/job_wire.hpp>

#include "channel_impl.hpp"

namespace tern {

PortWriter::PortWriter(Channel channel, std::uint32_t port)
    : PortWriter(std::move(channel), port, Options{}) {}

PortWriter::PortWriter(Channel channel, std::uint32_t port, Options options)
    : channel_(std::move(channel)),
      port_(port),
      options_(options),
      train_(std::make_unique<ipc::WireWriter>(/*share_data=*/true)) {
  if (options_.window == 0) options_.window = 1;
  if (options_.train_messages == 0) options_.train_messages = 1;
}

PortWriter::~PortWriter() { (void)flush(); }

IpcResult<void> PortWriter::write(std::string_view bytes, std::uint32_t id) {
  if (error_) return *error_;
  train_->WriteMessageHeader({.destination = port_, .id = id, .item_count = 1});
  train_->U8(static_cast<std::uint8_t>(ItemKind::kBytes));
  train_->Borrowed(bytes);  // a large one is written from the caller's buffer, in Added()
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
  train_->WriteMessageHeader({.destination = port_,
                              .id = message.id,
                              .item_count = static_cast<std::uint32_t>(message.items.size())});
  train_->WriteItems(message.items);
  return Added();
}

// One more message is in the train: it leaves when full, or at once when it holds data it
// did not copy (the caller's, valid only until write() returns).
IpcResult<void> PortWriter::Added() {
  ++train_count_;
  ++written_;
  if (train_count_ >= options_.train_messages || train_->out().size() >= options_.train_bytes ||
      !train_->shared().empty()) {
    return Ship();
  }
  return {};
}

IpcResult<void> PortWriter::Ship() {
  if (train_count_ == 0) return {};
  while (in_flight_.size() >= options_.window && !error_) CollectOldest();
  if (error_) {
    *train_ = ipc::WireWriter(/*share_data=*/true);  // holds no view of the caller's data
    return *error_;
  }
  // A stream never drops: a full queue holds the train at the port's home until there is room.
  const std::string header = libtern::TrainHeader(FullPolicy::kWait, ipc::kWaitForever,
                                                  static_cast<std::uint32_t>(train_count_));
  std::vector<std::string_view> pieces{header};
  for (std::string_view piece : libtern::Pieces(*train_)) pieces.push_back(piece);
  libtern::NoteAgentSend(*channel_.impl_, port_);
  auto request = channel_.impl_->Post(ipc::JobOp::kSendBatch, pieces);
  train_->out().clear();
  train_->shared().clear();
  train_count_ = 0;
  if (!request) {
    error_ = request.error();
    return *error_;
  }
  in_flight_.push_back(*request);
  return {};
}

// Waits for the oldest train's answer.
void PortWriter::CollectOldest() {
  const std::uint32_t request = in_flight_.front();
  in_flight_.pop_front();
  auto answer = libtern::ReadTrainAnswer(channel_.impl_->Collect(request));
  if (!answer) {
    if (!error_) error_ = answer.error();
    return;
  }
  accepted_ += answer->accepted;
  if (answer->refusal && !error_) error_ = std::move(answer->refusal);
}

IpcResult<void> PortWriter::flush() {
  if (!error_) (void)Ship();
  // Every answer is taken, after an error too, so that accepted() is final.
  while (!in_flight_.empty()) CollectOldest();
  if (error_) return *error_;
  return {};
}

}  // namespace tern
