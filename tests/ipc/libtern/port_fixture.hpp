// A test fixture for libtern's RPC tests: a fake agent (fake_agent.hpp), a channel to it, and a
// port with one send right made for it; and Eventually, for conditions another thread makes true.
//
// Thread-safety: as gtest fixtures are (one test thread); Eventually polls from the caller's.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <tern/ipc.hpp>
#include <thread>

#include "fake_agent.hpp"

namespace tern::testing {

// Polls `condition` for up to two seconds.
template <typename Condition>
bool Eventually(Condition condition) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (std::chrono::steady_clock::now() < deadline) {
    if (condition()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return condition();
}

struct PortFixture : ::testing::Test {
  FakeAgent agent;
  Channel channel = Channel::FromFd(agent.TakeJobFd());
  std::uint32_t port = 0;
  std::uint32_t send_right = 0;

  void SetUp() override {
    auto allocated = channel.port_allocate();
    ASSERT_TRUE(allocated);
    port = *allocated;
    auto made = channel.make_send(port);
    ASSERT_TRUE(made);
    send_right = *made;
  }
};

}  // namespace tern::testing
