// TrainRun: a run of data-only messages to one port kept in the layout the sending job wrote
// them (WireWriter::WriteMessage: copy-send, no reply right, bytes and out-of-line items), so
// that a stream goes from the sender's request to the receiver's answer without a
// TransitMessage per message: the home queues runs, and writes them out with only each
// message's first bytes rewritten. Internal to tern_ipc.
//
// Thread-safety: plain values; `owner` is shared and never written.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <tern/ipc/job_wire.hpp>
#include <tern/ipc/port_router.hpp>

namespace tern::ipc::router {

struct TransitMessage;

struct TrainRun {
  std::shared_ptr<const std::string> owner;  // keeps `bytes` alive
  std::string_view bytes;
  std::uint32_t count = 0;

  bool empty() const { return count == 0; }
};

struct TrainCheck {
  std::uint32_t destination = 0;  // the sender's name of the port, shared by every message
  std::size_t data_bytes = 0;     // the sum of the items' data
};

// Checks that `bytes` holds exactly `count` messages of the run layout, all to one name.
// Nullopt, with `why`, if not.
std::optional<TrainCheck> CheckTrain(std::string_view bytes, std::uint32_t count, std::string& why);

// Splits off and returns the first `n` messages (at most run.count) of `run`.
TrainRun TakeFront(TrainRun& run, std::uint32_t n);

// Removes the first message of `run` and returns it, to `destination` (the port), its items
// views into the same owner.
TransitMessage PopMessage(TrainRun& run, ObjectId destination);

// Writes the first `n` messages (at most run.count) of `run` as the receiver sees them, to
// `receive_name`, and removes them.
void WriteRun(WireWriter& out, TrainRun& run, std::uint32_t n, std::uint32_t receive_name);

}  // namespace tern::ipc::router
