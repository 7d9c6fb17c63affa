// JobSecret: the secret every node gives a job (docs/ipc.md "A channel the job reconnects").
#include <gtest/gtest.h>

#include <tern/ipc/job_attach.hpp>
#include <tern/ipc/job_secret.hpp>

namespace tern {
namespace {

// A job moved to a node whose agent was killed before it could say its hello re-attaches with
// the secret its old node gave it: every node derives the same one from the cluster secret.
TEST(JobSecret, EveryNodeDerivesTheSameSecretForAJobAndNoOtherJobGetsIt) {
  const std::string secret = ipc::JobSecret("cluster secret", "job.1");
  ASSERT_EQ(secret.size(), ipc::kJobSecretSize);
  EXPECT_EQ(ipc::JobSecret("cluster secret", "job.1"), secret);
  EXPECT_NE(ipc::JobSecret("cluster secret", "job.2"), secret);
  EXPECT_NE(ipc::JobSecret("another cluster", "job.1"), secret);
  // The secret is not the cluster secret, nor any part of it.
  EXPECT_EQ(secret.find("cluster"), std::string::npos);
  // No cluster secret: no derived one (the agent draws a random secret instead).
  EXPECT_TRUE(ipc::JobSecret("", "job.1").empty());
  const ipc::AttachFacts facts{.job_running_here = true,
                               .secret = ipc::JobSecret("cluster secret", "job.1"),
                               .peer_in_job = true};
  EXPECT_FALSE(ipc::RefuseAttach({"job.1", secret}, facts));
  EXPECT_TRUE(ipc::RefuseAttach({"job.1", ipc::JobSecret("cluster secret", "job.2")}, facts));
}

}  // namespace
}  // namespace tern
