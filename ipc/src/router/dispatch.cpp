// PortRouter, dispatch.cpp: an envelope from a node (or from this node to itself, through
// State::local) goes to the one handler of its Remote kind. Operations run at an object's home
// (port_home.cpp, links.cpp, regions.cpp, names.cpp); results go to the asker's ticket
// (tickets.cpp).
#include "state.hpp"

namespace tern::ipc {

void PortRouter::State::Dispatch(Envelope& e, std::uint64_t from) {
  switch (e.kind) {
    case Remote::kEnqueue:
      return HomeEnqueue(e);
    case Remote::kEnqueueBatch:
      return HomeEnqueueBatch(e);
    case Remote::kReceiveWait:
      return HomeReceiveWait(e);
    case Remote::kRefDelta:
      return HomeRefDelta(e);
    case Remote::kSetHolder:
      return HomeSetHolder(e);
    case Remote::kDestroyPort:
      return HomeDestroyPort(e);
    case Remote::kNotifyRequest:
      return HomeNotifyRequest(e);
    case Remote::kPortStatus:
      return HomePortStatus(e);
    case Remote::kLinkPost:
      return HomeLinkPost(e);
    case Remote::kLinkCancel:
      return HomeLinkCancel(e);
    case Remote::kSetLinkHolder:
      return HomeSetLinkHolder(e);
    case Remote::kBreakLinkEnd:
      return HomeBreakLinkEnd(e);
    case Remote::kLinkDirectBegin:
      return HomeLinkDirectBegin(e);
    case Remote::kLinkSettle:
      return HomeLinkSettle(e);
    case Remote::kRegionFetch:
      return HomeRegionFetch(e);
    case Remote::kJobMoved:
      return JobMovedHere(e.job, e.origin);
    case Remote::kNameQuery:
      return HomeNameQuery(e);
    default:
      return HandleResult(e, from);
  }
}

}  // namespace tern::ipc
