#include "tern/ipc/frame_type.hpp"

namespace tern::ipc {

std::string_view FrameTypeName(FrameType type) {
  switch (type) {
    case FrameType::kHello:
      return "Hello";
    case FrameType::kAuthProof:
      return "AuthProof";
    case FrameType::kAuthAccepted:
      return "AuthAccepted";
    case FrameType::kAuthRefused:
      return "AuthRefused";
    case FrameType::kHeartbeat:
      return "Heartbeat";
    case FrameType::kGossip:
      return "Gossip";
    case FrameType::kLinkIdle:
      return "LinkIdle";
    case FrameType::kApiRequest:
      return "ApiRequest";
    case FrameType::kApiResponse:
      return "ApiResponse";
    case FrameType::kIpcRequest:
      return "IpcRequest";
    case FrameType::kIpcReply:
      return "IpcReply";
    case FrameType::kIpcHello:
      return "IpcHello";
    case FrameType::kIpcAttach:
      return "IpcAttach";
    case FrameType::kIpcAttached:
      return "IpcAttached";
    case FrameType::kIpcRemote:
      return "IpcRemote";
    case FrameType::kIpcBlast:
      return "IpcBlast";
    case FrameType::kIpcBlastAck:
      return "IpcBlastAck";
    case FrameType::kIpcDirect:
      return "IpcDirect";
    case FrameType::kIpcSequenced:
      return "IpcSequenced";
    case FrameType::kIpcSequenceAck:
      return "IpcSequenceAck";
    case FrameType::kDirectCall:
      return "DirectCall";
    case FrameType::kDirectAnswer:
      return "DirectAnswer";
  }
  return "Unknown";
}

}  // namespace tern::ipc
