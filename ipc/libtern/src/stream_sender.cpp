#include "stream_sender.hpp"

#include <algorithm>
#include <utility>

namespace tern::libtern {

std::uint64_t StreamSender::Welcomed(std::uint32_t credits) {
  numbered_ = true;
  direct_ = true;
  credits_ = credits == 0 ? 1 : credits;
  // What went before this connection went through the agents, where the port's own limit
  // held it: the window counts from here.
  handed_ = last_;
  return last_;
}

void StreamSender::Sent(Frame frame) {
  unreceived_bytes_ += frame.bytes.size();
  unreceived_.push_back(std::move(frame));
}

bool StreamSender::Acked(const StreamAck& ack, std::vector<std::string>& freed) {
  if (ack.writer != writer_ || ack.received > last_ || ack.handed > last_) return false;
  handed_ = std::max(handed_, ack.handed);
  if (ack.credits != 0) credits_ = ack.credits;
  while (!unreceived_.empty() && unreceived_.front().last() <= ack.received) {
    received_count_ += unreceived_.front().count;
    unreceived_bytes_ -= unreceived_.front().bytes.size();
    freed.push_back(std::move(unreceived_.front().bytes.out));
    unreceived_.pop_front();
  }
  // A frame received in part: the reader drops the repeats of its first messages.
  return true;
}

std::deque<StreamSender::Frame> StreamSender::Broke() {
  direct_ = false;
  unreceived_bytes_ = 0;
  return std::exchange(unreceived_, {});
}

}  // namespace tern::libtern
