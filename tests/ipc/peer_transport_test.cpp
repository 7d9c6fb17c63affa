#include "tern/ipc/peer_transport.hpp"

#include <gtest/gtest.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <condition_variable>
#include <future>
#include <mutex>
#include <thread>

namespace tern::ipc {
namespace {

using namespace std::chrono_literals;

// One agent's transport on its own io_context thread, with every event recorded.
class Agent {
 public:
  Agent(std::uint64_t id, std::string secret) : work_(io_.get_executor()) {
    PeerTransport::Options options;
    options.node_name = "n" + std::to_string(id);
    options.node_id = id;
    options.secret = std::move(secret);
    options.listen = "127.0.0.1:0";
    options.advertise = "127.0.0.1:0";
    transport_ = std::make_unique<PeerTransport>(io_, options);
    transport_->on_peer_up = [this](const PeerIdentity& peer) {
      Record([&] { ups.push_back(peer.node_id); });
    };
    transport_->on_peer_down = [this](std::uint64_t id, const std::string&) {
      Record([&] { downs.push_back(id); });
    };
    transport_->on_frame = [this](std::uint64_t, const Frame& frame) {
      Record([&] { frames.push_back(frame.payload); });
    };
    transport_->on_refused = [this](const std::string&, const std::string& reason) {
      Record([&] { refusals.push_back(reason); });
    };
    auto started = transport_->Start();
    EXPECT_TRUE(started) << started.error().message;
    thread_ = std::thread([this] { io_.run(); });
  }
  ~Agent() { Stop(); }

  void Stop() {
    if (!thread_.joinable()) return;
    boost::asio::post(io_, [this] { transport_->Stop(); });
    work_.reset();
    io_.stop();
    thread_.join();
  }

  std::string Address() const { return "127.0.0.1:" + std::to_string(transport_->ListenPort()); }
  void ConnectTo(const std::string& address) {
    boost::asio::post(io_, [this, address] { transport_->ConnectTo(address); });
  }
  bool Send(std::uint64_t id, const std::string& payload) {
    return transport_->Send(id, FrameType::kHeartbeat, payload);
  }
  std::size_t PeerCount() {
    std::promise<std::size_t> count;
    boost::asio::post(io_, [&] { count.set_value(transport_->Peers().size()); });
    return count.get_future().get();
  }

  template <typename Predicate>
  bool WaitFor(Predicate predicate, std::chrono::milliseconds timeout = 10s) {
    std::unique_lock lock(mutex_);
    return changed_.wait_for(lock, timeout, [&] { return predicate(); });
  }

  std::vector<std::uint64_t> ups, downs;
  std::vector<std::string> frames, refusals;

 private:
  template <typename F>
  void Record(F f) {
    {
      std::lock_guard lock(mutex_);
      f();
    }
    changed_.notify_all();
  }

  boost::asio::io_context io_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_;
  std::unique_ptr<PeerTransport> transport_;
  std::thread thread_;
  std::mutex mutex_;
  std::condition_variable changed_;
};

TEST(PeerTransportTest, LinkComesUpAndFramesFlowBothWaysInOrder) {
  Agent a(1, "s"), b(2, "s");
  a.ConnectTo(b.Address());
  ASSERT_TRUE(a.WaitFor([&] { return a.ups.size() == 1; }));
  ASSERT_TRUE(b.WaitFor([&] { return b.ups.size() == 1; }));
  EXPECT_EQ(a.ups[0], 2u);
  EXPECT_EQ(b.ups[0], 1u);
  constexpr int kFrames = 10000;
  for (int i = 0; i < kFrames; ++i) ASSERT_TRUE(a.Send(2, std::to_string(i)));
  ASSERT_TRUE(b.Send(1, "back"));
  ASSERT_TRUE(b.WaitFor([&] { return b.frames.size() == kFrames; }));
  for (int i = 0; i < kFrames; ++i) ASSERT_EQ(b.frames[i], std::to_string(i));
  ASSERT_TRUE(a.WaitFor([&] { return a.frames.size() == 1; }));
  EXPECT_FALSE(a.Send(99, "nobody"));
}

TEST(PeerTransportTest, WrongSecretIsRefusedAndNeverUp) {
  Agent a(1, "right"), b(2, "wrong");
  b.ConnectTo(a.Address());
  ASSERT_TRUE(a.WaitFor([&] { return !a.refusals.empty(); }));
  EXPECT_NE(a.refusals[0].find("secret"), std::string::npos) << a.refusals[0];
  std::this_thread::sleep_for(300ms);  // give a wrongly accepted link the chance to show up
  EXPECT_TRUE(a.ups.empty());
  EXPECT_TRUE(b.ups.empty());
}

TEST(PeerTransportTest, SimultaneousDialsLeaveExactlyOneLink) {
  Agent a(1, "s"), b(2, "s");
  a.ConnectTo(b.Address());
  b.ConnectTo(a.Address());
  ASSERT_TRUE(a.WaitFor([&] { return a.ups.size() == 1; }));
  ASSERT_TRUE(b.WaitFor([&] { return b.ups.size() == 1; }));
  std::this_thread::sleep_for(500ms);
  EXPECT_EQ(a.PeerCount(), 1u);
  EXPECT_EQ(b.PeerCount(), 1u);
  ASSERT_TRUE(a.Send(2, "after"));
  ASSERT_TRUE(b.WaitFor([&] { return b.frames.size() == 1; }));
}

TEST(PeerTransportTest, PeerDeathIsReportedAndTheLinkComesBack) {
  auto a = std::make_unique<Agent>(1, "s");
  Agent b(2, "s");
  b.ConnectTo(a->Address());
  ASSERT_TRUE(b.WaitFor([&] { return b.ups.size() == 1; }));
  const std::string address = a->Address();
  a.reset();
  ASSERT_TRUE(b.WaitFor([&] { return b.downs.size() == 1; }));
  EXPECT_EQ(b.downs[0], 1u);
  (void)address;  // the restarted agent listens on a new ephemeral port: dial it afresh
  Agent again(1, "s");
  b.ConnectTo(again.Address());
  ASSERT_TRUE(b.WaitFor([&] { return b.ups.size() == 2; }));
}

}  // namespace
}  // namespace tern::ipc
