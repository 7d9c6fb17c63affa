// PeerTransport over 127.0.0.1 with ephemeral ports. Each Agent runs one transport on its own
// io_context thread (as ternd does) and records every callback; tests wait on those records.
#include <gtest/gtest.h>
#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <condition_variable>
#include <future>
#include <mutex>
#include <tern/ipc/peer_transport.hpp>
#include <thread>

#include "tls_test_certs.hpp"

namespace tern::ipc {
namespace {

using namespace std::chrono_literals;

// One CA for the whole test program: every agent below is a node of one cluster unless a test
// gives it other files.
testing::TestCa& ClusterCa() {
  static testing::TestCa ca;
  return ca;
}

class Agent {
 public:
  Agent(std::uint64_t id, std::string secret, std::uint16_t port = 0,
        const std::function<void(PeerTransport::Options&)>& tweak = nullptr)
      : work_(io_.get_executor()) {
    PeerTransport::Options options;
    options.tls = ClusterCa().Issue("n" + std::to_string(id));
    options.node_name = "n" + std::to_string(id);
    options.node_id = id;
    options.secret = std::move(secret);
    options.listen = "127.0.0.1:" + std::to_string(port);
    options.advertise = "127.0.0.1:" + std::to_string(port);
    options.api_address = "127.0.0.1:" + std::to_string(7000 + id);
    if (tweak) tweak(options);
    transport_ = std::make_unique<PeerTransport>(io_, options);
    transport_->on_peer_up = [this](const PeerIdentity& peer) {
      Record([&] { ups.push_back(peer); });
    };
    transport_->on_peer_down = [this](std::uint64_t id, const std::string& reason) {
      Record([&] { downs.emplace_back(id, reason); });
    };
    transport_->on_frame = [this](std::uint64_t from, const Frame& frame) {
      Record([&] { frames.emplace_back(from, frame.payload); });
    };
    transport_->on_refused = [this](const std::string& remote, const std::string& reason) {
      Record([&] { refusals.emplace_back(remote, reason); });
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
    thread_.join();  // returns once every link has closed
    transport_.reset();
  }

  std::uint16_t Port() const { return transport_->ListenPort(); }
  std::string Address() const { return "127.0.0.1:" + std::to_string(Port()); }
  void ConnectTo(const std::string& address) { transport_->ConnectTo(address); }
  bool Send(std::uint64_t id, const std::string& payload) {
    return transport_->Send(id, FrameType::kHeartbeat, payload);
  }
  // Runs on the io thread and returns its result.
  template <typename F>
  auto OnIo(F f) {
    std::packaged_task<decltype(f())()> task(f);
    auto result = task.get_future();
    boost::asio::post(io_, [&task] { task(); });
    return result.get();
  }
  PeerTransport::Stats Stats() {
    return OnIo([this] { return transport_->GetStats(); });
  }
  // One kept link, nothing authenticating, no dial running or scheduled.
  bool Settled() {
    auto stats = transport_->GetStats();
    return stats.links_established == 1 && stats.links_authenticating == 0 &&
           stats.dials_pending == 0;
  }
  std::size_t PeerCount() { return transport_->Peers().size(); }
  // On the io thread only (inside WaitOnIo).
  std::size_t Authenticating() { return transport_->GetStats().links_authenticating; }

  template <typename Predicate>
  bool WaitFor(Predicate predicate, std::chrono::milliseconds timeout = 15s) {
    std::unique_lock lock(mutex_);
    return changed_.wait_for(lock, timeout, predicate);
  }
  // Polls a condition evaluated on the io thread (link counts have no callback).
  template <typename Predicate>
  bool WaitOnIo(Predicate predicate, std::chrono::milliseconds timeout = 15s) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!OnIo(predicate)) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      std::this_thread::sleep_for(10ms);
    }
    return true;
  }
  template <typename F>
  auto Locked(F f) {
    std::lock_guard lock(mutex_);
    return f();
  }

  std::vector<PeerIdentity> ups;
  std::vector<std::pair<std::uint64_t, std::string>> downs;
  std::vector<std::pair<std::uint64_t, std::string>> frames;
  std::vector<std::pair<std::string, std::string>> refusals;
  std::unique_ptr<PeerTransport> transport_;

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
  std::thread thread_;
  std::mutex mutex_;
  std::condition_variable changed_;
};

TEST(PeerTransportTest, TwoTransportsConnectAndExchangeFramesBothWaysInOrder) {
  Agent a(1, "s"), b(2, "s");
  a.ConnectTo(b.Address());
  ASSERT_TRUE(a.WaitFor([&] { return a.ups.size() == 1; }));
  ASSERT_TRUE(b.WaitFor([&] { return b.ups.size() == 1; }));
  a.Locked([&] {
    EXPECT_EQ(a.ups[0].node_id, 2u);
    EXPECT_EQ(a.ups[0].name, "n2");
    EXPECT_EQ(a.ups[0].address, "127.0.0.1:0");  // as b advertises it
    EXPECT_EQ(a.ups[0].api_address, "127.0.0.1:7002");
  });
  b.Locked([&] { EXPECT_EQ(b.ups[0].node_id, 1u); });
  for (int i = 0; i < 100; ++i) {
    ASSERT_TRUE(a.Send(2, "a" + std::to_string(i)));
    ASSERT_TRUE(b.Send(1, "b" + std::to_string(i)));
  }
  ASSERT_TRUE(b.WaitFor([&] { return b.frames.size() == 100; }));
  ASSERT_TRUE(a.WaitFor([&] { return a.frames.size() == 100; }));
  for (int i = 0; i < 100; ++i) {
    EXPECT_EQ(b.Locked([&] { return b.frames[i]; }),
              std::make_pair(std::uint64_t{1}, "a" + std::to_string(i)));
    EXPECT_EQ(a.Locked([&] { return a.frames[i]; }),
              std::make_pair(std::uint64_t{2}, "b" + std::to_string(i)));
  }
  EXPECT_FALSE(a.Send(99, "nobody"));
  EXPECT_EQ(a.PeerCount(), 1u);
}

TEST(PeerTransportTest, TenThousandSmallFramesArriveInOrder) {
  Agent a(1, "s"), b(2, "s");
  b.ConnectTo(a.Address());
  ASSERT_TRUE(b.WaitFor([&] { return b.ups.size() == 1; }));
  constexpr int kFrames = 10000;
  // From another thread than the io thread, as the agent's workers do.
  std::thread sender([&] {
    for (int i = 0; i < kFrames; ++i) ASSERT_TRUE(b.Send(1, std::to_string(i)));
  });
  sender.join();
  ASSERT_TRUE(a.WaitFor([&] { return a.frames.size() == kFrames; }));
  a.Locked([&] {
    for (int i = 0; i < kFrames; ++i) ASSERT_EQ(a.frames[i].second, std::to_string(i));
  });
}

// Large payloads keep their own buffers in the send queue and are read into their own frames:
// mixed with small ones, every frame still arrives whole and in order.
TEST(PeerTransportTest, LargeAndSmallFramesArriveWholeAndInOrder) {
  Agent a(1, "s"), b(2, "s");
  b.ConnectTo(a.Address());
  ASSERT_TRUE(b.WaitFor([&] { return b.ups.size() == 1; }));
  const auto payload = [](int i) {
    if (i % 3 != 1) return std::to_string(i);
    std::string large((i % 2 ? 300 : 70) << 10, '\0');
    for (std::size_t j = 0; j < large.size(); ++j) large[j] = static_cast<char>(i + j);
    return large;
  };
  constexpr int kFrames = 60;
  std::thread sender([&] {
    for (int i = 0; i < kFrames; ++i) ASSERT_TRUE(b.Send(1, payload(i)));
  });
  sender.join();
  ASSERT_TRUE(a.WaitFor([&] { return a.frames.size() == kFrames; }));
  a.Locked([&] {
    for (int i = 0; i < kFrames; ++i) ASSERT_TRUE(a.frames[i].second == payload(i)) << i;
  });
}

TEST(PeerTransportTest, OversizePayloadIsRejectedBySend) {
  Agent a(1, "s"), b(2, "s");
  a.ConnectTo(b.Address());
  ASSERT_TRUE(a.WaitFor([&] { return a.ups.size() == 1; }));
  EXPECT_FALSE(a.Send(2, std::string(kDefaultMaxPayload + 1, 'x')));
  ASSERT_TRUE(a.Send(2, "still up"));
  ASSERT_TRUE(b.WaitFor([&] { return b.frames.size() == 1; }));
}

TEST(PeerTransportTest, WrongSecretIsRefusedLoggedAndNeverUp) {
  auto sink = std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(256);
  auto previous = spdlog::default_logger();
  spdlog::set_default_logger(std::make_shared<spdlog::logger>("test", sink));
  {
    Agent a(1, "right"), b(2, "wrong");
    b.ConnectTo(a.Address());
    // Both sides check the other's proof, so both refuse.
    ASSERT_TRUE(a.WaitFor([&] { return !a.refusals.empty(); }));
    ASSERT_TRUE(b.WaitFor([&] { return !b.refusals.empty(); }));
    a.Locked([&] {
      EXPECT_NE(a.refusals[0].second.find("secret"), std::string::npos) << a.refusals[0].second;
      EXPECT_EQ(a.refusals[0].first.rfind("127.0.0.1:", 0), 0u) << a.refusals[0].first;
    });
    b.Stop();
    a.Stop();
    EXPECT_TRUE(a.ups.empty());
    EXPECT_TRUE(b.ups.empty());
  }
  spdlog::set_default_logger(previous);
  bool logged = false;
  for (const auto& line : sink->last_formatted()) {
    if (line.find("refused peer n2 from 127.0.0.1:") != std::string::npos &&
        line.find("bad cluster secret") != std::string::npos) {
      logged = true;
    }
  }
  EXPECT_TRUE(logged);
}

TEST(PeerTransportTest, AgentWithACertificateOfAnotherCaIsRefusedLoggedAndNeverUp) {
  auto sink = std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(256);
  auto previous = spdlog::default_logger();
  spdlog::set_default_logger(std::make_shared<spdlog::logger>("test", sink));
  testing::TestCa other;
  {
    Agent a(1, "s");
    // The same secret, a certificate named as it claims, but from another CA.
    Agent b(2, "s", 0, [&](PeerTransport::Options& options) { options.tls = other.Issue("n2"); });
    b.ConnectTo(a.Address());
    ASSERT_TRUE(a.WaitFor([&] { return !a.refusals.empty(); }));
    ASSERT_TRUE(b.WaitFor([&] { return !b.refusals.empty(); }));
    a.Locked([&] {
      EXPECT_NE(a.refusals[0].second.find("TLS"), std::string::npos) << a.refusals[0].second;
    });
    b.Stop();
    a.Stop();
    EXPECT_TRUE(a.ups.empty());
    EXPECT_TRUE(b.ups.empty());
  }
  spdlog::set_default_logger(previous);
  bool logged = false;
  for (const auto& line : sink->last_formatted()) {
    if (line.find("from 127.0.0.1:") != std::string::npos &&
        line.find("TLS handshake failed") != std::string::npos) {
      logged = true;
    }
  }
  EXPECT_TRUE(logged) << "no 'TLS handshake failed' refusal in the log";
}

TEST(PeerTransportTest, AgentWhoseCertificateNamesAnotherNodeIsRefused) {
  // n2 holds a genuine certificate of the cluster, but n3's: it may not pose as n2.
  Agent a(1, "s");
  Agent b(2, "s", 0,
          [](PeerTransport::Options& options) { options.tls = ClusterCa().Issue("n3"); });
  b.ConnectTo(a.Address());
  ASSERT_TRUE(a.WaitFor([&] { return !a.refusals.empty(); }));
  a.Locked([&] {
    EXPECT_NE(a.refusals[0].second.find("certificate is for n3 but its Hello claims n2"),
              std::string::npos)
        << a.refusals[0].second;
  });
  b.Stop();
  a.Stop();
  EXPECT_TRUE(a.ups.empty());
}

// Connections that never authenticate are capped: beyond max_pending they are closed at once,
// and the ones within the cap end with the handshake timeout.
TEST(PeerTransportTest, PendingConnectionsAreCappedAndTimeOut) {
  Agent a(1, "s", 0, [](PeerTransport::Options& options) {
    options.max_pending = 2;
    options.handshake_timeout = 1500ms;
  });
  boost::asio::io_context io;
  std::vector<boost::asio::ip::tcp::socket> silent;
  const auto endpoint =
      boost::asio::ip::tcp::endpoint(boost::asio::ip::make_address("127.0.0.1"), a.Port());
  for (int i = 0; i < 2; ++i) {
    silent.emplace_back(io).connect(endpoint);
  }
  ASSERT_TRUE(a.WaitOnIo([&] { return a.Authenticating() == 2; }, 5s));
  boost::asio::ip::tcp::socket extra(io);
  extra.connect(endpoint);
  char byte;
  boost::system::error_code error;
  const auto t0 = std::chrono::steady_clock::now();
  extra.read_some(boost::asio::buffer(&byte, 1), error);
  EXPECT_EQ(error, boost::asio::error::eof) << "the third connection was not closed at once";
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 1000ms);
  // The two within the cap are closed by the handshake deadline.
  for (auto& socket : silent) {
    socket.read_some(boost::asio::buffer(&byte, 1), error);
    EXPECT_TRUE(error == boost::asio::error::eof || error == boost::asio::error::connection_reset)
        << error.message();
  }
  ASSERT_TRUE(a.WaitOnIo([&] { return a.Authenticating() == 0; }, 5s));
  // And a genuine agent still gets in.
  Agent b(2, "s");
  b.ConnectTo(a.Address());
  ASSERT_TRUE(a.WaitFor([&] { return a.ups.size() == 1; }));
}

TEST(PeerTransportTest, StartFailsReadablyWithoutACertificate) {
  boost::asio::io_context io;
  PeerTransport::Options options;
  options.node_name = "n9";
  options.node_id = 9;
  options.secret = "s";
  options.listen = "127.0.0.1:0";
  options.tls = ClusterCa().Issue("n9");
  options.tls.cert = ClusterCa().dir() + "/missing.crt";
  PeerTransport transport(io, options);
  auto started = transport.Start();
  ASSERT_FALSE(started);
  EXPECT_NE(started.error().message.find("no TLS certificate at " + options.tls.cert),
            std::string::npos)
      << started.error().message;
}

TEST(PeerTransportTest, SimultaneousConnectEndsWithExactlyOneLink) {
  if (std::getenv("DEBUG")) spdlog::set_level(spdlog::level::debug);
  const int rounds = std::getenv("ROUNDS") ? std::atoi(std::getenv("ROUNDS")) : 20;
  for (int round = 0; round < rounds; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    Agent a(1, "s"), b(2, "s");
    a.ConnectTo(b.Address());
    b.ConnectTo(a.Address());
    ASSERT_TRUE(a.WaitFor([&] { return a.ups.size() == 1; }));
    ASSERT_TRUE(b.WaitFor([&] { return b.ups.size() == 1; }));
    // Both dials finish (one link kept, the duplicate closed) and exactly one link remains.
    ASSERT_TRUE(a.WaitOnIo([&] { return a.Settled(); }));
    ASSERT_TRUE(b.WaitOnIo([&] { return b.Settled(); }));
    ASSERT_TRUE(a.Send(2, "after"));
    ASSERT_TRUE(b.Send(1, "after"));
    ASSERT_TRUE(b.WaitFor([&] { return b.frames.size() == 1; }));
    ASSERT_TRUE(a.WaitFor([&] { return a.frames.size() == 1; }));
    EXPECT_TRUE(a.OnIo([&] { return a.Settled(); }));
    EXPECT_TRUE(b.OnIo([&] { return b.Settled(); }));
    EXPECT_EQ(a.PeerCount(), 1u);
    EXPECT_EQ(b.PeerCount(), 1u);
    EXPECT_EQ(a.Locked([&] { return a.ups.size() + a.downs.size(); }), 1u);
    EXPECT_EQ(b.Locked([&] { return b.ups.size() + b.downs.size(); }), 1u);
  }
}

TEST(PeerTransportTest, StoppedPeerIsReportedDownAndRedialledAfterRestart) {
  Agent b(2, "s");
  auto a = std::make_unique<Agent>(1, "s");
  const std::uint16_t port = a->Port();
  b.ConnectTo(a->Address());
  ASSERT_TRUE(b.WaitFor([&] { return b.ups.size() == 1; }));
  ASSERT_TRUE(a->WaitFor([&] { return a->ups.size() == 1; }));
  a.reset();  // a stops: its links close
  ASSERT_TRUE(b.WaitFor([&] { return b.downs.size() == 1; }));
  b.Locked([&] { EXPECT_EQ(b.downs[0].first, 1u); });
  EXPECT_FALSE(b.Send(1, "to nobody"));
  // a comes back on the same address: b still wants it and dials again by itself.
  Agent again(1, "s", port);
  ASSERT_TRUE(b.WaitFor([&] { return b.ups.size() == 2; }));
  ASSERT_TRUE(again.WaitFor([&] { return again.ups.size() == 1; }));
  ASSERT_TRUE(b.Send(1, "hello again"));
  ASSERT_TRUE(again.WaitFor([&] { return again.frames.size() == 1; }));
}

TEST(PeerTransportTest, DisconnectClosesTheLinkWithItsReasonAndTheDialerComesBack) {
  Agent a(1, "s");
  Agent b(2, "s");
  b.ConnectTo(a.Address());
  ASSERT_TRUE(a.WaitFor([&] { return a.ups.size() == 1; }));
  ASSERT_TRUE(b.WaitFor([&] { return b.ups.size() == 1; }));
  // a closes the link of a peer that broke the protocol (say, a malformed IPC frame).
  a.OnIo([&] {
    a.transport_->Disconnect(2, "malformed IPC frame from node 2");
    return 0;
  });
  ASSERT_TRUE(a.WaitFor([&] { return a.downs.size() == 1; }));
  a.Locked([&] { EXPECT_EQ(a.downs[0].second, "malformed IPC frame from node 2"); });
  // b still wants a: it dials again and a fresh link comes up.
  ASSERT_TRUE(a.WaitFor([&] { return a.ups.size() == 2; }));
  // Each side learns of the new link on its own; b may send once it has.
  ASSERT_TRUE(b.WaitFor([&] { return b.ups.size() == 2; }));
  ASSERT_TRUE(b.Send(1, "after"));
  ASSERT_TRUE(a.WaitFor([&] { return a.frames.size() == 1; }));
}

TEST(PeerTransportTest, ForgottenAddressIsNotRedialled) {
  Agent b(2, "s");
  auto a = std::make_unique<Agent>(1, "s");
  const std::uint16_t port = a->Port();
  b.ConnectTo(a->Address());
  ASSERT_TRUE(b.WaitFor([&] { return b.ups.size() == 1; }));
  b.transport_->Forget(a->Address());
  a.reset();
  ASSERT_TRUE(b.WaitFor([&] { return b.downs.size() == 1; }));
  Agent again(1, "s", port);
  // The redial would come within 1 s; the restarted agent would see it.
  EXPECT_FALSE(again.WaitFor([&] { return !again.ups.empty(); }, 2500ms));
  EXPECT_EQ(b.Locked([&] { return b.ups.size(); }), 1u);
}

TEST(PeerTransportTest, StartFailsReadablyOnBadListenAddress) {
  boost::asio::io_context io;
  PeerTransport transport(io, {.node_name = "x", .node_id = 1, .listen = "not-an-ip:1"});
  auto started = transport.Start();
  ASSERT_FALSE(started);
  EXPECT_NE(started.error().message.find("not-an-ip:1"), std::string::npos);
}

}  // namespace
}  // namespace tern::ipc
