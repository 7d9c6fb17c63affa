// The values of tern IPC that a job sees (docs/ipc.md): statuses, rights and dispositions, and the
// typed message body that travels in sends and receives. libtern's public header <tern/ipc.hpp>
// uses these; how they are laid out on the job's channel is job_wire.hpp's business (private).
// Status, right, disposition and kind numbers are wire format: never renumber, only append.
//
// Thread-safety: plain values.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace tern::ipc {

enum class JobStatus : std::uint16_t {
  kOk = 0,
  kInvalidName = 1,     // no such name in the caller's table, or the wrong kind of right
  kDeadName = 2,        // the port died
  kQueueFull = 3,       // full queue, policy fail (or notify: a send-possible will follow)
  kTimedOut = 4,        // wait for room / receive / op wait ran out
  kAlreadyMatched = 5,  // cancel of a link operation that has been matched
  kLinkBroken = 6,      // the other end is gone
  kNotFound = 7,        // name lookup: no such name
  kBadRequest = 8,      // malformed body, unknown op, bad argument
  kUnavailable = 9,     // the port's home node cannot be reached
  kTooLarge = 10,       // message over the limit
  kCancelled = 11,      // the operation was cancelled
  kExists = 12,         // name register: the name is taken (here, or by another user)
  kOverQuota = 13,      // over one of the node's per-job IPC limits ([ipc] config)
};

std::string_view JobStatusName(JobStatus status);

enum class RightType : std::uint8_t {
  kNone = 0,
  kReceive = 1,
  kSend = 2,
  kSendOnce = 3,
  kDeadName = 4,
  kLinkEnd = 5,
  kRegion = 6,
};

// How a right named in a message leaves the sender (Mach's dispositions).
enum class Disposition : std::uint8_t {
  kNone = 0,
  kMoveReceive = 1,
  kMoveSend = 2,
  kCopySend = 3,
  kMakeSend = 4,
  kMoveSendOnce = 5,
  kMakeSendOnce = 6,
  kMoveLinkEnd = 7,
  kCopyRegion = 8,
  kMoveRegion = 9,
};

enum class FullPolicy : std::uint8_t { kFail = 0, kWait = 1, kNotify = 2 };

enum class NotificationKind : std::uint8_t { kDeadName = 1, kNoSenders = 2, kPortDestroyed = 3 };

// Message ids of notifications the agent sends (docs/ipc.md "Notifications").
constexpr std::uint32_t kDeadNameNotification = 0x7e000001;
constexpr std::uint32_t kNoSendersNotification = 0x7e000002;
constexpr std::uint32_t kPortDestroyedNotification = 0x7e000003;
constexpr std::uint32_t kSendPossibleNotification = 0x7e000004;
// A link receive answered by the home: this direction is direct with the epoch in its one
// bytes item (8 bytes, little-endian); libtern's, never a job's (docs/ipc.md "Link operations
// direct").
constexpr std::uint32_t kLinkDirectNowId = 0x7e030001;

constexpr std::uint32_t kWaitForever = 0xffffffff;
constexpr std::uint32_t kDefaultQueueLimit = 64;
constexpr std::size_t kMaxMessageBytes = 256u << 20;  // 256 MiB in one message

enum class ItemKind : std::uint8_t {
  kBytes = 1,
  kPort = 2,
  kOutOfLine = 3,
  kLinkEnd = 4,
  kRegion = 5
};

// One typed item of a message body. In a job's send: `name` + `disposition` for rights. In
// what a job receives: `name` is the receiver's name for the right, `disposition` tells what
// arrived (kMoveReceive: a receive right; kMoveSend: a send right; kMoveSendOnce; ...).
// Data items share their buffer: copying an Item does not copy the bytes, and an item decoded
// from a received frame may be a view into that frame, which `data` then keeps alive.
struct Item {
  ItemKind kind = ItemKind::kBytes;
  std::shared_ptr<const std::string> data;  // kBytes, kOutOfLine: owns `view`
  std::string_view view;                    // the item's bytes, inside *data (unset: all of *data)
  std::uint32_t name = 0;
  Disposition disposition = Disposition::kNone;

  static Item Bytes(std::string bytes);
  static Item OutOfLine(std::string bytes);
  // A data item that is `bytes`, inside the buffer `owner` (no copy).
  static Item Shared(ItemKind kind, std::shared_ptr<const std::string> owner,
                     std::string_view bytes);
  static Item Port(std::uint32_t name, Disposition disposition);
  std::string_view bytes() const {
    if (view.data() != nullptr || !data) return view;
    return *data;  // an Item built by hand with only `data`
  }
};

struct Message {
  std::uint32_t destination = 0;  // send: the dest name; receive: the receive right's name
  Disposition destination_disposition = Disposition::kCopySend;
  std::uint32_t reply = 0;  // 0: none; receive: the receiver's name of the reply right
  Disposition reply_disposition = Disposition::kNone;
  std::uint32_t id = 0;
  std::vector<Item> items;

  std::size_t ByteSize() const;  // sum of the data of its items
};

struct SendRequest {
  Message message;
  FullPolicy policy = FullPolicy::kFail;
  std::uint32_t timeout_ms = 0;   // kWait
  std::uint32_t notify_port = 0;  // kNotify: a name of a port to notify (any right to it)
};

// Result of a link operation: a completed receive carries the message (destination = the
// end it arrived on); a completed send carries nothing.
struct OpResult {
  bool is_receive = false;
  std::uint32_t end = 0;
  Message message;
};

}  // namespace tern::ipc
