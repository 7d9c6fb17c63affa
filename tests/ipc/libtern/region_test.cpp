// Regions: the fd of a region_map reply arrives with SCM_RIGHTS and maps shared pages.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <future>
#include <tern/ipc.hpp>

#include "fake_agent.hpp"

namespace tern {
namespace {

using testing::FakeAgent;

std::size_t OpenFds() {
  return static_cast<std::size_t>(std::distance(
      std::filesystem::directory_iterator("/proc/self/fd"), std::filesystem::directory_iterator()));
}

TEST(Region, MapsSharedPagesFromTheReceivedFd) {
  FakeAgent agent;
  Channel channel = Channel::FromFd(agent.TakeJobFd());
  auto region = channel.region_create(8192);
  ASSERT_TRUE(region) << region.error().ToString();
  // After the create: the fake agent's own memfd lives in this process too.
  const std::size_t fds_before = OpenFds();
  {
    auto first = channel.region_map(*region);
    ASSERT_TRUE(first) << first.error().ToString();
    auto second = channel.region_map(*region);
    ASSERT_TRUE(second) << second.error().ToString();
    ASSERT_EQ(first->size(), 8192u);
    ASSERT_NE(first->data(), second->data());
    std::memcpy(static_cast<char*>(first->data()) + 5000, "shared", 6);
    EXPECT_EQ(second->view().substr(5000, 6), "shared");

    Region moved = std::move(*first);
    EXPECT_EQ(first->data(), nullptr);
    EXPECT_EQ(moved.view().substr(5000, 6), "shared");
  }
  // The received fds were closed after mapping and the mappings are gone.
  EXPECT_EQ(OpenFds(), fds_before);
}

TEST(Region, FdsGoToTheirRepliesAmongOtherTraffic) {
  FakeAgent agent;
  Channel channel = Channel::FromFd(agent.TakeJobFd());
  auto small = channel.region_create(4096);
  auto large = channel.region_create(3 * 4096);
  ASSERT_TRUE(small && large);
  auto noise = std::async(std::launch::async, [&] {
    for (int i = 0; i < 300; ++i) {
      if (!channel.port_allocate()) return false;
    }
    return true;
  });
  for (int i = 0; i < 100; ++i) {
    auto a = channel.region_map(*small);
    auto b = channel.region_map(*large);
    ASSERT_TRUE(a && b);
    ASSERT_EQ(a->size(), 4096u);
    ASSERT_EQ(b->size(), 3u * 4096);
  }
  EXPECT_TRUE(noise.get());
}

TEST(Region, MapOfANonRegionFails) {
  FakeAgent agent;
  Channel channel = Channel::FromFd(agent.TakeJobFd());
  auto port = channel.port_allocate();
  ASSERT_TRUE(port);
  auto mapped = channel.region_map(*port);
  ASSERT_FALSE(mapped);
  EXPECT_EQ(mapped.status(), JobStatus::kInvalidName);
}

}  // namespace
}  // namespace tern
