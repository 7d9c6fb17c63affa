// Post-copy's relay as processes of their own (`ternd page-relay`, PageRelayProcess): two real
// relay processes with real certificates, plain sockets standing in for CRIU's two ends.
#include "page_relay_process.hpp"

#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <string>
#include <thread>

#include "blocking_socket_io.hpp"
#include "lazy_page_proxy.hpp"
#include "tls_test_certs.hpp"

namespace tern::agent {
namespace {

using ipc::testing::TestCa;
using testing::Bound;
using testing::ExpectRequestAndPagesCross;
using testing::ReadExactly;
using testing::ReadToEnd;
using testing::WriteAll;
using namespace std::chrono_literals;

// Whether the process behind `pidfd` ends within `patience` (the pidfd turns readable).
bool Ends(int pidfd, std::chrono::milliseconds patience) {
  pollfd ended{pidfd, POLLIN, 0};
  return ::poll(&ended, 1, static_cast<int>(patience.count())) == 1;
}

class PageRelayProcessTest : public ::testing::Test {
 protected:
  PageRelayProcess::Options Options(const std::string& peer, const ipc::TlsFiles& files) {
    PageRelayProcess::Options options;
    options.migration = "node1.1-00000001";
    options.peer_node = peer;
    options.tls = files;
    options.log_path = ca_.dir() + "/relay-" + std::to_string(++relays_) + ".log";
    options.program = TERN_TERND_PATH;
    return options;
  }

  // The source's relay (node1, for node2); returns CRIU's end.
  UniqueFd StartSource() {
    auto pair = LoopbackTcpPair();
    EXPECT_TRUE(pair);
    auto relay = PageRelayProcess::Serve(Options("node2", ca_.Issue("node1")),
                                         std::move(pair->second), "127.0.0.1", 0);
    EXPECT_TRUE(relay) << (relay ? "" : relay.error().message);
    source_ = std::move(*relay);
    EXPECT_NE(source_->port(), 0);
    Bound(pair->first.get());
    return std::move(pair->first);
  }

  UniqueFd StartDestination(const ipc::TlsFiles& files, std::unique_ptr<PageRelayProcess>* relay) {
    auto pair = LoopbackTcpPair();
    EXPECT_TRUE(pair);
    auto dialled = PageRelayProcess::Dial(Options("node1", files), std::move(pair->second),
                                          "127.0.0.1", source_->port());
    EXPECT_TRUE(dialled) << (dialled ? "" : dialled.error().message);
    *relay = std::move(*dialled);
    Bound(pair->first.get());
    return std::move(pair->first);
  }

  static UniqueFd Pidfd(pid_t pid) {
    return UniqueFd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  }

  TestCa ca_;
  int relays_ = 0;
  std::atomic<bool> never_{false};
  std::unique_ptr<PageRelayProcess> source_;
  std::unique_ptr<PageRelayProcess> destination_;
};

TEST_F(PageRelayProcessTest, TheStreamOutlivesTheHandlesAndTheRelaysEndWithIt) {
  UniqueFd source_criu = StartSource();
  UniqueFd destination_criu = StartDestination(ca_.Issue("node2"), &destination_);
  auto in = destination_->AwaitConnected(10s, never_);
  ASSERT_TRUE(in) << in.error().message;
  UniqueFd source_pid = Pidfd(source_->pid());
  UniqueFd destination_pid = Pidfd(destination_->pid());
  ASSERT_TRUE(source_pid.valid() && destination_pid.valid());
  // As after a commit: the agent lets both run and forgets them (or dies).
  source_->LetRun();
  destination_->LetRun();
  source_.reset();
  destination_.reset();
  EXPECT_FALSE(Ends(source_pid.get(), 0ms));
  EXPECT_FALSE(Ends(destination_pid.get(), 0ms));

  std::string request = "give me pages 1-256";
  ExpectRequestAndPagesCross(destination_criu.get(), source_criu.get(), request);

  // CRIU's two ends finish; so do the relays, by themselves.
  ::shutdown(destination_criu.get(), SHUT_WR);
  EXPECT_EQ(ReadToEnd(source_criu.get()), "");
  source_criu.Reset();
  EXPECT_EQ(ReadToEnd(destination_criu.get()), "");
  EXPECT_TRUE(Ends(source_pid.get(), 10'000ms));
  EXPECT_TRUE(Ends(destination_pid.get(), 10'000ms));
}

TEST_F(PageRelayProcessTest, ANodeOtherThanThePeerGetsNothing) {
  UniqueFd source_criu = StartSource();
  ASSERT_TRUE(WriteAll(source_criu.get(), "secret pages"));
  std::unique_ptr<PageRelayProcess> intruder;
  UniqueFd intruder_criu = StartDestination(ca_.Issue("node3"), &intruder);
  // Its TLS 1.3 handshake may finish on its side before the source checks the name; the
  // source then closes, and nothing of the stream reaches it.
  EXPECT_EQ(ReadToEnd(intruder_criu.get()), "");
  UniqueFd intruder_pid = Pidfd(intruder->pid());
  EXPECT_TRUE(Ends(intruder_pid.get(), 10'000ms)) << "the refused relay went on";

  TestCa other;  // a certificate naming the peer, from a CA the cluster does not know
  std::unique_ptr<PageRelayProcess> stranger;
  UniqueFd stranger_criu = StartDestination(other.Issue("node2"), &stranger);
  EXPECT_EQ(ReadToEnd(stranger_criu.get()), "");

  // The source kept listening for its peer, and the peer gets what was waiting.
  UniqueFd destination_criu = StartDestination(ca_.Issue("node2"), &destination_);
  ASSERT_TRUE(destination_->AwaitConnected(10s, never_));
  EXPECT_EQ(ReadExactly(destination_criu.get(), 12), "secret pages");
}

TEST_F(PageRelayProcessTest, StoppingARelayEndsCriusConnectionOnBothNodes) {
  UniqueFd source_criu = StartSource();
  UniqueFd destination_criu = StartDestination(ca_.Issue("node2"), &destination_);
  ASSERT_TRUE(destination_->AwaitConnected(10s, never_));
  source_->Stop();  // the move was aborted at the source
  EXPECT_EQ(ReadToEnd(source_criu.get()), "");
  EXPECT_EQ(ReadToEnd(destination_criu.get()), "");
}

TEST_F(PageRelayProcessTest, AnAbortEndsTheWaitForThePeer) {
  auto pair = LoopbackTcpPair();
  ASSERT_TRUE(pair);
  // Nobody listens on the port: the relay keeps failing, or the wait is cut short.
  auto relay = PageRelayProcess::Dial(Options("node1", ca_.Issue("node2")), std::move(pair->second),
                                      "127.0.0.1", 9);
  ASSERT_TRUE(relay);
  std::atomic<bool> aborted{true};
  EXPECT_FALSE((*relay)->AwaitConnected(10s, aborted));
}

}  // namespace
}  // namespace tern::agent
