// PeerLink against a scripted peer: a blocking TLS client in the test thread that runs its own
// PeerHandshake (or misbehaves on purpose). The link runs on its own io_context thread.
#include <gtest/gtest.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>
#include <condition_variable>
#include <future>
#include <mutex>
#include <tern/ipc/peer_link.hpp>
#include <thread>

#include "tls_test_certs.hpp"

namespace tern::ipc {
namespace {

namespace asio = boost::asio;
using Tcp = asio::ip::tcp;
using namespace std::chrono_literals;

// A PeerLink on one end of a loopback connection, the raw socket `peer` on the other.
class LinkFixture : public ::testing::Test {
 protected:
  void Open(PeerLink::Options options) {
    Tcp::acceptor acceptor(raw_io_, Tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    Tcp::socket ours(asio::make_strand(io_));
    ours.connect(acceptor.local_endpoint());
    acceptor.accept(peer);
    options.self = PeerIdentity{"us", 1, "127.0.0.1:1", "127.0.0.1:2"};
    if (!options.tls) options.tls = Context(ca_.Issue("us"), TlsRole::kServer);
    PeerLink::Callbacks callbacks;
    callbacks.on_established = [this](PeerLink&, const PeerIdentity& who) {
      Record([&] { established = who; });
    };
    callbacks.on_frame = [this](PeerLink&, Frame frame) {
      Record([&] { frames.push_back(std::move(frame)); });
    };
    callbacks.on_closed = [this](PeerLink&, const std::string& reason, PeerLink::CloseKind kind) {
      Record([&] {
        ++closes;
        close_reason = reason;
        close_kind = kind;
      });
    };
    link = std::make_shared<PeerLink>(std::move(ours), std::move(options), std::move(callbacks));
    asio::post(link->executor(), [l = link] { l->Start(); });
    thread_ = std::thread([this] { io_.run(); });
  }

  void TearDown() override {
    if (link) link->Close("test over");
    link.reset();
    work_.reset();
    if (thread_.joinable()) thread_.join();
  }

  static std::shared_ptr<asio::ssl::context> Context(const TlsFiles& files, TlsRole role) {
    auto context = MakeTlsContext(files, role);
    EXPECT_TRUE(context) << context.error().message;
    return context ? *context : nullptr;
  }

  // The peer's TLS handshake (as the client), with a certificate of the link's CA for "them"
  // unless `context` says otherwise; false when it fails.
  bool PeerTls(std::shared_ptr<asio::ssl::context> context = nullptr) {
    peer_context_ = context ? context : Context(ca_.Issue("them"), TlsRole::kClient);
    tls_.emplace(peer, *peer_context_);
    boost::system::error_code error;
    tls_->handshake(asio::ssl::stream_base::client, error);
    return !error;
  }

  // Runs the peer's side of the handshake over the blocking TLS stream, claiming `name`.
  PeerHandshake::Outcome PeerHandshakes(const std::string& secret,
                                        const std::string& name = "them") {
    if (!tls_ && !PeerTls()) return PeerHandshake::Outcome::kRefused;
    PeerHandshake handshake(PeerIdentity{name, 2, "127.0.0.1:3", ""}, secret);
    handshake.BindToChannel(PeerCertificateName(tls_->native_handle()),
                            PeerChannelBinding(tls_->native_handle()));
    for (auto& frame : handshake.Start().send) Write(frame);
    while (true) {
      auto frame = Read();
      if (!frame) return PeerHandshake::Outcome::kRefused;
      auto actions = handshake.OnFrame(*frame);
      for (auto& reply : actions.send) Write(reply);
      if (actions.outcome != PeerHandshake::Outcome::kPending) return actions.outcome;
    }
  }

  void Write(const Frame& frame) {
    asio::write(*tls_, asio::buffer(EncodeFrame(frame.type, frame.payload)));
  }
  std::optional<Frame> Read() {
    while (true) {
      if (auto frame = decoder_.Next()) return frame;
      char buffer[4096];
      boost::system::error_code error;
      const std::size_t size = tls_->read_some(asio::buffer(buffer), error);
      if (error) return std::nullopt;
      if (!decoder_.Feed(std::string_view(buffer, size))) return std::nullopt;
    }
  }

  template <typename Predicate>
  bool WaitFor(Predicate predicate, std::chrono::milliseconds timeout = 10s) {
    std::unique_lock lock(mutex_);
    return changed_.wait_for(lock, timeout, predicate);
  }

  testing::TestCa ca_;
  asio::io_context raw_io_;
  Tcp::socket peer{raw_io_};
  std::shared_ptr<asio::ssl::context> peer_context_;
  std::optional<asio::ssl::stream<Tcp::socket&>> tls_;
  std::shared_ptr<PeerLink> link;
  std::optional<PeerIdentity> established;
  std::vector<Frame> frames;
  int closes = 0;
  std::string close_reason;
  PeerLink::CloseKind close_kind = PeerLink::CloseKind::kClosed;

 private:
  template <typename F>
  void Record(F f) {
    {
      std::lock_guard lock(mutex_);
      f();
    }
    changed_.notify_all();
  }

  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> work_{io_.get_executor()};
  std::thread thread_;
  FrameDecoder decoder_;
  std::mutex mutex_;
  std::condition_variable changed_;
};

// The IPC service hands a link all its frames for one node at once: they leave in order and
// whole, a large one among small ones included, and the peer can read them all at once.
TEST_F(LinkFixture, FramesSentTogetherArriveInOrderAndTogether) {
  Open({.secret = "s"});
  ASSERT_EQ(PeerHandshakes("s"), PeerHandshake::Outcome::kEstablished);
  ASSERT_TRUE(WaitFor([&] { return established.has_value(); }));
  const std::string large(200 * 1024, 'L');
  std::vector<Frame> batch;
  batch.push_back({FrameType::kIpcRemote, "ok"});
  batch.push_back({FrameType::kIpcRemote, large});
  batch.push_back({FrameType::kIpcRemote, "reply"});
  link->Send(std::move(batch));
  for (const std::string& expected : {std::string("ok"), large, std::string("reply")}) {
    auto frame = Read();
    ASSERT_TRUE(frame);
    EXPECT_EQ(frame->type, FrameType::kIpcRemote);
    EXPECT_EQ(frame->payload, expected);
  }
  std::vector<Frame> small;
  small.push_back({FrameType::kIpcRemote, "first"});
  small.push_back({FrameType::kIpcRemote, "second"});
  link->Send(std::move(small));
  // One write: once the first frame's bytes are there, so are the second's.
  char buffer[256];
  const std::size_t got = tls_->read_some(asio::buffer(buffer));
  FrameDecoder decoder;
  ASSERT_TRUE(decoder.Feed(std::string_view(buffer, got)));
  auto first = decoder.Next();
  auto second = decoder.Next();
  ASSERT_TRUE(first && second) << got << " bytes in the first read";
  EXPECT_EQ(first->payload, "first");
  EXPECT_EQ(second->payload, "second");
}

TEST_F(LinkFixture, EstablishesThenDeliversFramesBothWays) {
  Open({.secret = "s"});
  link->Send(FrameType::kHeartbeat, "early");  // held until the handshake ends
  ASSERT_EQ(PeerHandshakes("s"), PeerHandshake::Outcome::kEstablished);
  ASSERT_TRUE(WaitFor([&] { return established.has_value(); }));
  EXPECT_EQ(established->name, "them");
  EXPECT_EQ(established->node_id, 2u);
  auto early = Read();
  ASSERT_TRUE(early);
  EXPECT_EQ(early->payload, "early");
  Write(Frame{FrameType::kHeartbeat, "one"});
  Write(Frame{static_cast<FrameType>(999), "unknown type"});
  ASSERT_TRUE(WaitFor([&] { return frames.size() == 2; }));
  EXPECT_EQ(frames[0].payload, "one");
  EXPECT_EQ(static_cast<int>(frames[1].type), 999);
}

TEST_F(LinkFixture, WrongSecretClosesAsRefusedAndTellsThePeer) {
  Open({.secret = "right"});
  EXPECT_EQ(PeerHandshakes("wrong"), PeerHandshake::Outcome::kRefused);
  ASSERT_TRUE(WaitFor([&] { return closes == 1; }));
  EXPECT_NE(close_kind, PeerLink::CloseKind::kClosed);
  EXPECT_FALSE(established);
}

TEST_F(LinkFixture, MalformedFrameAfterHandshakeClosesWithReason) {
  Open({.secret = "s"});
  ASSERT_EQ(PeerHandshakes("s"), PeerHandshake::Outcome::kEstablished);
  ASSERT_TRUE(WaitFor([&] { return established.has_value(); }));
  asio::write(*tls_, asio::buffer(std::string("\xff\xff\xff\xff\0\x0a", 6)));
  ASSERT_TRUE(WaitFor([&] { return closes == 1; }));
  EXPECT_EQ(close_kind, PeerLink::CloseKind::kClosed);
  EXPECT_NE(close_reason.find("malformed frame"), std::string::npos) << close_reason;
  EXPECT_FALSE(Read());  // the link closed its socket
}

TEST_F(LinkFixture, GarbageBeforeHandshakeIsRefused) {
  Open({.secret = "s"});
  asio::write(peer, asio::buffer(std::string("GET / HTTP/1.1\r\n\r\n")));
  ASSERT_TRUE(WaitFor([&] { return closes == 1; }));
  EXPECT_EQ(close_kind, PeerLink::CloseKind::kRefusedByUs);
  EXPECT_NE(close_reason.find("TLS handshake failed"), std::string::npos) << close_reason;
}

// Plain frames are not spoken at all: every byte after the TCP connect is TLS.
TEST_F(LinkFixture, PlainHelloWithoutTlsIsRefused) {
  Open({.secret = "s"});
  PeerHandshake handshake(PeerIdentity{"them", 2, "127.0.0.1:3", ""}, "s");
  for (auto& frame : handshake.Start().send) {
    asio::write(peer, asio::buffer(EncodeFrame(frame.type, frame.payload)));
  }
  ASSERT_TRUE(WaitFor([&] { return closes == 1; }));
  EXPECT_EQ(close_kind, PeerLink::CloseKind::kRefusedByUs);
  EXPECT_NE(close_reason.find("TLS handshake failed"), std::string::npos) << close_reason;
  EXPECT_FALSE(established);
}

TEST_F(LinkFixture, PeerWithACertificateOfAnotherCaIsRefused) {
  Open({.secret = "s"});
  testing::TestCa other;
  TlsFiles files = other.Issue("them");
  files.ca = ca_.dir() + "/ca.crt";  // it trusts our CA, but its own certificate is not ours
  PeerTls(Context(files, TlsRole::kClient));
  EXPECT_EQ(PeerHandshakes("s"), PeerHandshake::Outcome::kRefused);
  ASSERT_TRUE(WaitFor([&] { return closes == 1; }));
  EXPECT_EQ(close_kind, PeerLink::CloseKind::kRefusedByUs);
  EXPECT_NE(close_reason.find("certificate verify failed"), std::string::npos) << close_reason;
  EXPECT_FALSE(established);
}

TEST_F(LinkFixture, PeerWithoutACertificateIsRefused) {
  Open({.secret = "s"});
  auto bare = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_client);
  bare->load_verify_file(ca_.dir() + "/ca.crt");
  bare->set_verify_mode(asio::ssl::verify_peer);
  PeerTls(bare);
  EXPECT_EQ(PeerHandshakes("s"), PeerHandshake::Outcome::kRefused);
  ASSERT_TRUE(WaitFor([&] { return closes == 1; }));
  EXPECT_EQ(close_kind, PeerLink::CloseKind::kRefusedByUs);
  EXPECT_NE(close_reason.find("TLS"), std::string::npos) << close_reason;
  EXPECT_FALSE(established);
}

TEST_F(LinkFixture, PeerWhoseCertificateNamesAnotherNodeIsRefused) {
  Open({.secret = "s"});
  PeerTls(Context(ca_.Issue("mallory"), TlsRole::kClient));
  EXPECT_EQ(PeerHandshakes("s", "them"), PeerHandshake::Outcome::kRefused);
  ASSERT_TRUE(WaitFor([&] { return closes == 1; }));
  EXPECT_EQ(close_kind, PeerLink::CloseKind::kRefusedByUs);
  EXPECT_NE(close_reason.find("certificate is for mallory but its Hello claims them"),
            std::string::npos)
      << close_reason;
  EXPECT_FALSE(established);
}

// Before authentication a frame may declare at most 4 KiB: a 16 MiB header costs nothing.
TEST_F(LinkFixture, LargeFrameBeforeAuthenticationIsRefusedByItsHeader) {
  Open({.secret = "s"});
  ASSERT_TRUE(PeerTls());
  std::string header;
  AppendFrameHeader(header, FrameType::kHello, 16 * 1024 * 1024);
  asio::write(*tls_, asio::buffer(header));
  ASSERT_TRUE(WaitFor([&] { return closes == 1; }));
  EXPECT_EQ(close_kind, PeerLink::CloseKind::kRefusedByUs);
  EXPECT_NE(close_reason.find("before authentication"), std::string::npos) << close_reason;
}

TEST_F(LinkFixture, SilentPeerTimesOut) {
  Open({.secret = "s", .handshake_timeout = 200ms});
  ASSERT_TRUE(WaitFor([&] { return closes == 1; }));
  EXPECT_EQ(close_kind, PeerLink::CloseKind::kRefusedByUs);
  EXPECT_NE(close_reason.find("timed out"), std::string::npos) << close_reason;
}

TEST_F(LinkFixture, QueueOverflowClosesTheLinkWithAReason) {
  Open({.secret = "s", .max_queued_bytes = 1024 * 1024});
  ASSERT_EQ(PeerHandshakes("s"), PeerHandshake::Outcome::kEstablished);
  ASSERT_TRUE(WaitFor([&] { return established.has_value(); }));
  // The peer never reads: the kernel buffers fill, then the link's queue.
  const std::string chunk(256 * 1024, 'x');
  for (int i = 0; i < 256; ++i) link->Send(FrameType::kHeartbeat, chunk);
  ASSERT_TRUE(WaitFor([&] { return closes == 1; }));
  EXPECT_NE(close_reason.find("send queue full"), std::string::npos) << close_reason;
}

TEST_F(LinkFixture, CloseIsIdempotentAndReportsOnce) {
  Open({.secret = "s"});
  ASSERT_EQ(PeerHandshakes("s"), PeerHandshake::Outcome::kEstablished);
  ASSERT_TRUE(WaitFor([&] { return established.has_value(); }));
  link->Close("first");
  link->Close("second");
  link->Send(FrameType::kHeartbeat, "after close");
  ASSERT_TRUE(WaitFor([&] { return closes >= 1; }));
  EXPECT_FALSE(Read());  // EOF: the link is gone
  EXPECT_EQ(closes, 1);
  EXPECT_EQ(close_reason, "first");
}

}  // namespace
}  // namespace tern::ipc
