#include "tern/jobs/job_network.hpp"

#include <gtest/gtest.h>

#include <set>

#include "tern/jobs/job_record.hpp"

namespace tern::jobs {
namespace {

TEST(JobNetworkTest, AddressesComeFromTheHomeNodesShareInTurn) {
  EXPECT_EQ(*JobAddress("10.78.3.0/24", 1), "10.78.3.1");
  EXPECT_EQ(*JobAddress("10.78.3.0/24", 17), "10.78.3.17");
  EXPECT_EQ(*JobAddress("10.78.3.0/24", 254), "10.78.3.254");
  // Never the network or the broadcast number: after 254 it starts again at 1.
  EXPECT_EQ(*JobAddress("10.78.3.0/24", 255), "10.78.3.1");
  EXPECT_EQ(*JobAddress("10.78.16.0/20", 300), "10.78.17.44");
  std::set<std::string> seen;
  for (std::uint64_t serial = 1; serial <= 254; ++serial)
    seen.insert(*JobAddress("10.1.2.0/24", serial));
  EXPECT_EQ(seen.size(), 254u);
}

TEST(JobNetworkTest, AMalformedSubnetIsRefusedWithTheKeyNamed) {
  for (const char* bad :
       {"", "10.78.3.0", "10.78.3.0/", "10.78.3.0/33", "10.78.3/24", "x/24", "10.78.3.0/24x"}) {
    auto address = JobAddress(bad, 1);
    ASSERT_FALSE(address) << bad;
    EXPECT_NE(address.error().message.find("net.subnet"), std::string::npos);
  }
}

TEST(JobNetworkTest, VethNamesFitAnInterfaceNameAndDifferPerJob) {
  const std::string one = JobVethName("node1.1");
  EXPECT_EQ(one.size(), 10u);
  EXPECT_EQ(one.rfind("tj", 0), 0u);
  EXPECT_EQ(one, JobVethName("node1.1"));
  EXPECT_NE(one, JobVethName("node1.2"));
}

TEST(JobNetworkTest, TheAddressIsKeptInTheRecordAndShownInTheJob) {
  JobRecord job;
  job.id = "node1.3";
  job.net_address = "10.78.1.3";
  auto back = FromPersistentJson(PersistentJson(job));
  ASSERT_TRUE(back);
  EXPECT_EQ(back->net_address, "10.78.1.3");
  EXPECT_EQ(ToJson(job, job.submitted_at)["address"], "10.78.1.3");
  job.net_address.clear();
  EXPECT_TRUE(ToJson(job, job.submitted_at)["address"].is_null());
}

}  // namespace
}  // namespace tern::jobs
