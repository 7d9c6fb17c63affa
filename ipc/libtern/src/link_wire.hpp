// The frames of a direct link connection (docs/ipc.md "Link operations direct", "On the
// connection"), one connection per direction of a link, from the sender S to the receiver R:
//
//   LinkHello (46)      S -> R  [u64 epoch]                 once, right after the begin
//   LinkOffer (47)      S -> R  [u32 seq][u32 message id][u32 count][items]
//   LinkMatched (48)    R -> S  [u32 seq]                   a receive took the offer
//   LinkCancel (49)     S -> R  [u32 seq]
//   LinkCancelled (50)  R -> S  [u32 seq]                   the offer was still unmatched
//   LinkMatchedBack (51) S -> R [u64 epoch][u32 seq]        S's receiver took the offer `seq` of
//                                                           the other direction's epoch
//
// LinkMatchedBack is a LinkMatched that rides the other direction's connection, ahead of an
// offer: a job that receives and sends on one end answers the offers it took with its next
// offer, in one write (docs/ipc.md "Link operations direct", "Answers that ride the reply").
//
// Integers big-endian, items as in direct_wire.hpp (data only). Parsing takes the frame's
// payload as the owner of the items it returns. Anything malformed (short, trailing bytes, an
// item that is not data, a type not of this list, a sequence of 0) is an error: the connection
// is then broken.
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <tern/expected.hpp>
#include <tern/ipc.hpp>
#include <tern/ipc/frame.hpp>
#include <tern/ipc/job_wire.hpp>

namespace tern::libtern {

inline constexpr auto kLinkHello = static_cast<ipc::FrameType>(46);
inline constexpr auto kLinkOffer = static_cast<ipc::FrameType>(47);
inline constexpr auto kLinkMatched = static_cast<ipc::FrameType>(48);
inline constexpr auto kLinkCancel = static_cast<ipc::FrameType>(49);
inline constexpr auto kLinkCancelled = static_cast<ipc::FrameType>(50);
inline constexpr auto kLinkMatchedBack = static_cast<ipc::FrameType>(51);

struct LinkFrame {
  ipc::FrameType type{};
  std::uint64_t epoch = 0;  // LinkHello, LinkMatchedBack
  std::uint32_t seq = 0;    // the others
  Message message;          // LinkOffer: its id and items (destination 0)
};

void WriteLinkHello(ipc::WireWriter& out, std::uint64_t epoch);
// `message`'s items must be data only.
void WriteLinkOffer(ipc::WireWriter& out, std::uint32_t seq, const Message& message);
// LinkMatched, LinkCancel or LinkCancelled.
void WriteLinkSeq(ipc::WireWriter& out, ipc::FrameType type, std::uint32_t seq);
void WriteLinkMatchedBack(ipc::WireWriter& out, std::uint64_t epoch, std::uint32_t seq);

Expected<LinkFrame> ParseLinkFrame(ipc::Frame frame);

}  // namespace tern::libtern
