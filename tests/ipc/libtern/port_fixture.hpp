// A test fixture for libtern's RPC tests: a fake agent (fake_agent.hpp), a channel to it, and a
// port with one send right made for it; and Eventually, for conditions another thread makes true.
//
// Thread-safety: as gtest fixtures are (one test thread); Eventually polls from the caller's.
#pragma once

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <tern/ipc.hpp>
#include <thread>
#include <vector>

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

// Counts the handler calls running at once. EchoAfter(hold) is a handler that echoes the
// request's bytes after `hold`; peak() is the most that ran at the same time.
class Concurrency {
 public:
  RpcHandler EchoAfter(std::chrono::milliseconds hold) {
    return [this, hold](const RpcRequest& request) {
      const int now = ++running_;
      int seen = peak_.load();
      while (now > seen && !peak_.compare_exchange_weak(seen, now)) {
      }
      std::this_thread::sleep_for(hold);
      --running_;
      return std::vector<Item>{Item::Bytes(std::string(request.bytes()))};
    };
  }
  int peak() const { return peak_.load(); }

 private:
  std::atomic<int> running_{0};
  std::atomic<int> peak_{0};
};

struct PortFixture : ::testing::Test {
  FakeAgent agent;
  Channel channel = Channel::FromFd(agent.TakeJobFd());
  std::uint32_t port = 0;
  std::uint32_t send_right = 0;

  void SetUp() override { UsePort(0); }

  // A new port of `queue_limit` (0: the default) and a send right to it, as `port` and
  // `send_right`.
  void UsePort(std::uint32_t queue_limit) {
    auto allocated = channel.port_allocate(queue_limit);
    ASSERT_TRUE(allocated);
    port = *allocated;
    auto made = channel.make_send(port);
    ASSERT_TRUE(made);
    send_right = *made;
  }

  // Receives `count` messages with Channel::receive, each exactly as sent: id i, one bytes item
  // `prefix` + i (no stream header, no sync); then nothing more.
  void ExpectPlainMessages(std::uint32_t count, const std::string& prefix) {
    for (std::uint32_t i = 0; i < count; ++i) {
      auto message = channel.receive(port, Timeout(2000));
      ASSERT_TRUE(message) << message.error().ToString();
      EXPECT_EQ(message->id, i);
      ASSERT_EQ(message->items.size(), 1u);
      EXPECT_EQ(FirstBytes(*message), prefix + std::to_string(i));
    }
    EXPECT_EQ(channel.receive(port, Timeout(0)).status(), JobStatus::kTimedOut);
  }
};

// The same with a port of room for any test's backlog (the fake agent fails a kWait send to a full
// queue at once); a direct stream's window is that limit too.
struct LargeQueuePortFixture : PortFixture {
  void SetUp() override { UsePort(65536); }
};

}  // namespace tern::testing
