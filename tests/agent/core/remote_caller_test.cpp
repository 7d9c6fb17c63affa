#include <gtest/gtest.h>

#include <tern/agent/remote_caller.hpp>

namespace tern::agent {
namespace {

ApiCall Forwarded(std::string method, std::string target, uid_t uid) {
  ApiCall call;
  call.method = std::move(method);
  call.target = std::move(target);
  call.caller.uid = uid;
  call.caller.identified = true;
  call.forwarded = true;
  return call;
}

TEST(RemoteCallerTest, RootFromAnotherNodeMayNotSubmitWhenRemoteRootIsOff) {
  ApiCall call = Forwarded("POST", "/v1/jobs", 0);
  auto checked = CheckForwardedCaller(call, "unix", /*allow_remote_root=*/false, "node3");
  ASSERT_FALSE(checked) << "root on node1 got to submit as root on node3";
  EXPECT_NE(checked.error().message.find("remote root is off on node3"), std::string::npos)
      << checked.error().message;
  ApiCall cancel = Forwarded("POST", "/v1/jobs/node3.1/cancel", 0);
  EXPECT_FALSE(CheckForwardedCaller(cancel, "tcp 10.0.0.1:5000", false, "node3"));
}

TEST(RemoteCallerTest, RootFromAnotherNodeMayActWhenAllowed) {
  ApiCall call = Forwarded("POST", "/v1/jobs", 0);
  EXPECT_TRUE(CheckForwardedCaller(call, "unix", /*allow_remote_root=*/true, "node3"));
  EXPECT_TRUE(call.caller.identified);
}

TEST(RemoteCallerTest, RootsReadsAreAnsweredAsToAnAnonymousCaller) {
  ApiCall call = Forwarded("GET", "/v1/jobs/node3.1/logs", 0);
  ASSERT_TRUE(CheckForwardedCaller(call, "unix", false, "node3"));
  EXPECT_FALSE(call.caller.identified) << "root elsewhere reads as nobody in particular";
}

TEST(RemoteCallerTest, OtherUsersAndTheAgentsOwnCallsPass) {
  ApiCall user = Forwarded("POST", "/v1/jobs", 1000);
  EXPECT_TRUE(CheckForwardedCaller(user, "unix", false, "node3"));
  EXPECT_TRUE(user.caller.identified);
  ApiCall migration = Forwarded("POST", "/v1/migrations/node1.1-0123abcd/restore", 0);
  EXPECT_TRUE(CheckForwardedCaller(migration, "unix", false, "node3"))
      << "root's `tern migrate` of a job on its own node reaches the destination";
  ApiCall balancer = Forwarded("POST", "/v1/jobs/node1.1/migrate", 0);
  EXPECT_TRUE(CheckForwardedCaller(balancer, "balancer", false, "node3"));
}

}  // namespace
}  // namespace tern::agent
