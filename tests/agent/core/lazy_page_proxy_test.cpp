// The post-copy relay (LazyPageProxy) end to end on loopback: two agents' relays with real
// certificates, and plain sockets standing in for CRIU's two ends.
#include "lazy_page_proxy.hpp"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <future>
#include <string>
#include <tern/ipc/tls_files.hpp>
#include <thread>

#include "blocking_socket_io.hpp"
#include "lazy_page_relay.hpp"
#include "tls_test_certs.hpp"

namespace tern::agent {
namespace {

using ipc::testing::TestCa;
using testing::Bound;
using testing::ExpectRequestAndPagesCross;
using testing::ReadExactly;
using testing::ReadToEnd;
using testing::WriteAll;

TEST(LazyPageRelayTest, HeadersRoundTripAndOversizedChunksAreRefused) {
  for (std::uint32_t length : {0u, 1u, 4096u, kMaxRelayChunk}) {
    const auto header = EncodeRelayHeader(length);
    auto decoded = DecodeRelayHeader(header);
    ASSERT_TRUE(decoded) << decoded.error().message;
    EXPECT_EQ(*decoded, length);
  }
  const auto too_big = EncodeRelayHeader(kMaxRelayChunk + 1);
  EXPECT_FALSE(DecodeRelayHeader(too_big));
  const std::array<std::uint8_t, 4> junk = {0xff, 0xff, 0xff, 0xff};
  EXPECT_FALSE(DecodeRelayHeader(junk));
}

TEST(LazyPageRelayTest, OnlyTheMigrationsPeerIsLetIn) {
  EXPECT_TRUE(CheckRelayPeer("node2", "node2"));
  auto other = CheckRelayPeer("node3", "node2");
  ASSERT_FALSE(other);
  EXPECT_NE(other.error().message.find("node3"), std::string::npos);
  EXPECT_FALSE(CheckRelayPeer("", "node2"));
  EXPECT_FALSE(CheckRelayPeer("", ""));
}

TEST(LoopbackTcpPairTest, TheTwoEndsTalkAndNoListenerStays) {
  auto pair = LoopbackTcpPair();
  ASSERT_TRUE(pair) << pair.error().message;
  ASSERT_EQ(::write(pair->first.get(), "ping", 4), 4);
  char got[4];
  ASSERT_EQ(::read(pair->second.get(), got, 4), 4);
  EXPECT_EQ(std::string(got, 4), "ping");
  sockaddr_in address{};
  socklen_t length = sizeof address;
  ASSERT_EQ(::getpeername(pair->second.get(), reinterpret_cast<sockaddr*>(&address), &length), 0);
  // The port the pair was made on takes no one else: its listener is closed.
  UniqueFd intruder(::socket(AF_INET, SOCK_STREAM, 0));
  EXPECT_NE(::connect(intruder.get(), reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
}

class LazyPageProxyTest : public ::testing::Test {
 protected:
  std::shared_ptr<boost::asio::ssl::context> Context(const ipc::TlsFiles& files,
                                                     ipc::TlsRole role) {
    auto context = ipc::MakeTlsContext(files, role);
    if (!context) ADD_FAILURE() << context.error().message;
    return context ? *context : nullptr;
  }

  // The source (node1) serving node2 on 127.0.0.1; returns CRIU's end of it.
  UniqueFd StartSource() {
    auto pair = LoopbackTcpPair();
    EXPECT_TRUE(pair);
    LazyPageProxy::Options options;
    options.migration = "node1.1-00000001";
    options.peer_node = "node2";
    options.tls = Context(ca_.Issue("node1"), ipc::TlsRole::kServer);
    auto served =
        LazyPageProxy::Serve(io_, std::move(options), std::move(pair->second), "127.0.0.1", 0);
    EXPECT_TRUE(served) << (served ? "" : served.error().message);
    source_ = *served;
    Bound(pair->first.get());
    return std::move(pair->first);
  }

  // A destination dialling the source with `files`' certificate; returns CRIU's end of it.
  UniqueFd StartDestination(const ipc::TlsFiles& files, std::shared_ptr<LazyPageProxy>* relay) {
    auto pair = LoopbackTcpPair();
    EXPECT_TRUE(pair);
    LazyPageProxy::Options options;
    options.migration = "node1.1-00000001";
    options.peer_node = "node1";
    options.tls = Context(files, ipc::TlsRole::kClient);
    auto dialled = LazyPageProxy::Dial(io_, std::move(options), std::move(pair->second),
                                       "127.0.0.1", source_->port());
    EXPECT_TRUE(dialled);
    *relay = *dialled;
    Bound(pair->first.get());
    return std::move(pair->first);
  }

  void Run() {
    thread_ = std::thread([this] { io_.run(); });
  }
  // Runs `work` on the io thread and waits for it.
  template <typename Work>
  void OnIo(Work work) {
    std::promise<void> done;
    boost::asio::post(io_, [&] {
      work();
      done.set_value();
    });
    done.get_future().wait();
  }

  void TearDown() override {
    auto close = [this] {
      if (source_) source_->Close();
      if (destination_) destination_->Close();
    };
    // While the work guard still keeps the io thread running: it would return as soon as the
    // relays had nothing left to do, and a posted close would never run.
    if (thread_.joinable()) {
      OnIo(close);
    } else {
      close();
    }
    work_.reset();
    io_.stop();
    if (thread_.joinable()) thread_.join();
  }

  TestCa ca_;
  boost::asio::io_context io_;
  std::optional<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> work_{
      io_.get_executor()};
  std::thread thread_;
  std::shared_ptr<LazyPageProxy> source_;
  std::shared_ptr<LazyPageProxy> destination_;
};

TEST_F(LazyPageProxyTest, BytesCrossBothWaysExactlyAndEachSideEndsOnItsOwn) {
  UniqueFd source_criu = StartSource();
  UniqueFd destination_criu = StartDestination(ca_.Issue("node2"), &destination_);
  std::promise<Expected<void>> source_ended, destination_ended;
  source_->WhenEnded([&](Expected<void> result) { source_ended.set_value(result); });
  destination_->WhenEnded([&](Expected<void> result) { destination_ended.set_value(result); });
  Run();

  // Requests one way, many times a chunk of pages the other, as lazy-pages and the page server.
  std::string request(24, '\0');
  for (std::size_t i = 0; i < request.size(); ++i) request[i] = static_cast<char>(i * 7);
  ExpectRequestAndPagesCross(destination_criu.get(), source_criu.get(), request);

  // The destination's CRIU is done asking (shuts down its side); the source's still answers.
  ::shutdown(destination_criu.get(), SHUT_WR);
  EXPECT_EQ(ReadToEnd(source_criu.get()), "");
  ASSERT_TRUE(WriteAll(source_criu.get(), "status"));
  source_criu.Reset();
  EXPECT_EQ(ReadToEnd(destination_criu.get()), "status");

  auto source_result = source_ended.get_future().get();
  auto destination_result = destination_ended.get_future().get();
  EXPECT_TRUE(source_result) << source_result.error().message;
  EXPECT_TRUE(destination_result) << destination_result.error().message;
}

TEST_F(LazyPageProxyTest, ANodeOtherThanThePeerGetsNothingAndThePeerStillGetsIn) {
  UniqueFd source_criu = StartSource();
  // What the source's CRIU says before anyone connects must reach the peer only.
  ASSERT_TRUE(WriteAll(source_criu.get(), "secret pages"));
  std::shared_ptr<LazyPageProxy> intruder;
  UniqueFd intruder_criu = StartDestination(ca_.Issue("node3"), &intruder);
  std::promise<Expected<void>> intruder_ended;
  intruder->WhenEnded([&](Expected<void> result) { intruder_ended.set_value(result); });
  Run();
  EXPECT_EQ(ReadToEnd(intruder_criu.get()), "");
  EXPECT_FALSE(intruder_ended.get_future().get());

  UniqueFd destination_criu;
  OnIo([&] { destination_criu = StartDestination(ca_.Issue("node2"), &destination_); });
  EXPECT_EQ(ReadExactly(destination_criu.get(), 12), "secret pages");
}

TEST_F(LazyPageProxyTest, ACertificateOfAnotherCaIsRefused) {
  UniqueFd source_criu = StartSource();
  ASSERT_TRUE(WriteAll(source_criu.get(), "secret pages"));
  TestCa other;
  std::shared_ptr<LazyPageProxy> intruder;
  UniqueFd intruder_criu = StartDestination(other.Issue("node2"), &intruder);
  std::promise<Expected<void>> connected;
  intruder->WhenConnected([&](Expected<void> result) { connected.set_value(result); });
  Run();
  EXPECT_FALSE(connected.get_future().get());
  EXPECT_EQ(ReadToEnd(intruder_criu.get()), "");
}

TEST_F(LazyPageProxyTest, ClosingTheRelayEndsCriusConnection) {
  UniqueFd source_criu = StartSource();
  UniqueFd destination_criu = StartDestination(ca_.Issue("node2"), &destination_);
  std::promise<Expected<void>> connected;
  destination_->WhenConnected([&](Expected<void> result) { connected.set_value(result); });
  Run();
  ASSERT_TRUE(connected.get_future().get());
  OnIo([this] { source_->Close(); });  // the migration was aborted at the source
  EXPECT_EQ(ReadToEnd(source_criu.get()), "");
  EXPECT_EQ(ReadToEnd(destination_criu.get()), "");
}

}  // namespace
}  // namespace tern::agent
