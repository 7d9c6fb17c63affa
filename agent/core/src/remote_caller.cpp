#include "tern/agent/remote_caller.hpp"

namespace tern::agent {

namespace {

// A request that some user made through an agent's API, rather than one the agents make.
bool FromAUser(const std::string& via) { return via == "unix" || via.rfind("tcp", 0) == 0; }

}  // namespace

Expected<void> CheckForwardedCaller(ApiCall& call, const std::string& origin_via,
                                    bool allow_remote_root, const std::string& this_node) {
  if (call.caller.uid != 0 || allow_remote_root || !FromAUser(origin_via)) return {};
  // The migration protocol between source and destination: the move was authorized where the
  // job lives, and the job keeps its own user.
  if (call.target.rfind("/v1/migrations", 0) == 0) return {};
  if (call.method == "GET") {
    // Listings stay whole for root elsewhere; what needs an identity (a job's logs) does not.
    call.caller.identified = false;
    return {};
  }
  return Fail("remote root is off on " + this_node + ": root on another node may not " +
              call.method + " " + call.target.substr(0, 120) + " here (run it on " + this_node +
              ", or set [security] allow_remote_root = true there)");
}

}  // namespace tern::agent
