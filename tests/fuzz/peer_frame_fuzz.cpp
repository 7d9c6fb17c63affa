// Fuzz target: what a peer node sends after the handshake. The bytes go through the peer
// FrameDecoder (ipc/src/frame.cpp) in pieces whose sizes the input picks, through Feed and
// through Prepare/Commit; each whole frame then goes to the decoder of its type, as the agent
// would hand it on: IPC (PortRouter::NodeFrame), blast chunks and acks, direct-call frames,
// gossip, forwarded API requests and responses.
//
// Properties checked: no frame exceeds the decoder's limit; while the stream is not refused,
// the frames re-encode to exactly the bytes consumed and nothing is lost or invented.
//
// Input: [u8 limit exponent][u8 mode][stream...]. Piece sizes come from the stream's own bytes
// (FuzzedDataProvider), so a seed of real frames stays meaningful.
#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <tern/agent/api_call.hpp>
#include <tern/agent/load_json.hpp>
#include <tern/agent/target.hpp>
#include <tern/ipc/blast_outbox.hpp>
#include <tern/ipc/direct_wire.hpp>
#include <tern/ipc/frame.hpp>
#include <tern/ipc/port_router.hpp>

#include "fuzz_check.hpp"

namespace {

using tern::ipc::FrameType;

// Regions never get created from a peer frame, but the router needs a store.
class NoRegions : public tern::ipc::RegionStore {
 public:
  bool Create(tern::ipc::ObjectId, std::uint64_t) override { return false; }
  std::optional<std::string> Read(tern::ipc::ObjectId, std::uint64_t, std::size_t) override {
    return std::nullopt;
  }
  bool Write(tern::ipc::ObjectId, std::uint64_t, std::string_view) override { return false; }
  void Destroy(tern::ipc::ObjectId) override {}
};

constexpr std::uint64_t kSelf = 1;
constexpr std::uint64_t kPeer = 2;

void Dispatch(tern::ipc::PortRouter& router, const tern::ipc::Frame& frame) {
  switch (frame.type) {
    case FrameType::kIpcRemote:
      (void)router.NodeFrame(kPeer, frame.payload);
      (void)router.TakeActions();
      break;
    case FrameType::kIpcBlast:
      (void)tern::ipc::ParseBlastChunk(frame.payload);
      break;
    case FrameType::kIpcBlastAck:
      (void)tern::ipc::IsBlastAck(frame.payload);
      break;
    case FrameType::kIpcDirect:
      (void)tern::ipc::ParseDirectFrame(frame.payload);
      break;
    case FrameType::kGossip:
      (void)tern::agent::GossipFromJson(frame.payload);
      break;
    case FrameType::kApiRequest:
      if (auto call = tern::agent::DecodeApiRequest(frame.payload)) {
        (void)tern::agent::ParseTarget(call->second.target);
      }
      break;
    case FrameType::kApiResponse:
      (void)tern::agent::DecodeApiResponse(frame.payload);
      break;
    default:
      break;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider input(data, size);
  // Limits from 64 B to 16 MiB: small ones make the "too large" path reachable.
  const std::size_t limit = std::size_t{64} << input.ConsumeIntegralInRange<int>(0, 18);
  const bool prepared = input.ConsumeBool();
  tern::ipc::FrameDecoder decoder(limit);
  NoRegions regions;
  tern::ipc::PortRouter router(kSelf, regions);
  router.NodeUp(kPeer);

  std::string fed;        // every byte given to the decoder
  std::string reencoded;  // every frame it gave back, encoded again
  bool broken = false;
  while (input.remaining_bytes() > 0 && !broken) {
    const std::size_t piece = input.ConsumeIntegralInRange<std::size_t>(1, 4096);
    const std::string bytes = input.ConsumeBytesAsString(piece);
    if (bytes.empty()) break;
    tern::Expected<void> result;
    if (prepared) {
      std::size_t done = 0;
      while (done < bytes.size() && result) {
        auto space = decoder.Prepare();
        FUZZ_CHECK(!space.empty(), "Prepare returned no space");
        const std::size_t n = std::min(space.size(), bytes.size() - done);
        std::copy_n(bytes.data() + done, n, space.data());
        result = decoder.Commit(n);
        done += n;
      }
    } else {
      result = decoder.Feed(bytes);
    }
    fed += bytes;
    broken = !result;
    while (auto frame = decoder.Next()) {
      FUZZ_CHECK(frame->payload.size() <= limit, "a frame above the decoder's limit");
      reencoded += tern::ipc::EncodeFrame(frame->type, frame->payload);
      Dispatch(router, *frame);
    }
  }
  if (!broken) {
    FUZZ_CHECK(reencoded.size() + decoder.buffered() == fed.size(),
               "frames and buffered bytes do not add up to the bytes fed");
    FUZZ_CHECK(fed.compare(0, reencoded.size(), reencoded) == 0,
               "frames do not re-encode to the bytes fed");
    FUZZ_CHECK(decoder.TakeBuffered() == fed.substr(reencoded.size()),
               "the buffered bytes are not the rest of the stream");
  }
  return 0;
}
