// Re-attaching a channel (docs/ipc.md "A channel the job reconnects"): the test plays the dying
// agent on a socket pair (hello, one lookup, then gone with a request unanswered) and the
// restarted agent's job socket, which hands over a FakeAgent's end as the new channel.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <array>
#include <cstring>
#include <filesystem>
#include <functional>
#include <future>
#include <stdexcept>
#include <tern/fd_control.hpp>
#include <tern/ipc.hpp>
#include <tern/ipc/frame.hpp>
#include <tern/ipc/job_attach.hpp>
#include <tern/unique_fd.hpp>
#include <thread>

#include "fake_agent.hpp"

namespace tern {
namespace {

using testing::FakeAgent;

const std::string kSecret(ipc::kJobSecretSize, 'k');

void WriteAll(int fd, std::string_view bytes) {
  while (!bytes.empty()) {
    const ssize_t put = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    ASSERT_GT(put, 0) << std::strerror(errno);
    bytes.remove_prefix(static_cast<std::size_t>(put));
  }
}

// The next frame from `fd`, or nullopt at end of file.
std::optional<ipc::Frame> ReadFrame(int fd, ipc::FrameDecoder& decoder) {
  for (;;) {
    if (auto frame = decoder.Next()) return frame;
    char buffer[4096];
    const ssize_t got = ::read(fd, buffer, sizeof buffer);
    if (got <= 0) return std::nullopt;
    if (!decoder.Feed(std::string_view(buffer, static_cast<std::size_t>(got)))) return std::nullopt;
  }
}

std::string U32(std::uint32_t v) {
  ipc::WireWriter writer;
  writer.U32(v);
  return writer.Take();
}

class JobSocketDouble {
 public:
  JobSocketDouble() {
    char dir[] = "/tmp/tern-reattach-XXXXXX";
    EXPECT_NE(::mkdtemp(dir), nullptr);
    dir_ = dir;
    path_ = dir_ + "/jobs.sock";
    listener_.Reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::strncpy(address.sun_path, path_.c_str(), sizeof address.sun_path - 1);
    EXPECT_EQ(::bind(listener_.get(), reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
    EXPECT_EQ(::listen(listener_.get(), 8), 0);
  }
  ~JobSocketDouble() {
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }
  const std::string& path() const { return path_; }

  // Accepts one attach; answers `answer`, with `channel` (if valid) on its first byte.
  // `meanwhile` runs after the attach request is read and before the answer (the job's
  // re-attach is under way then).
  ipc::AttachRequest Serve(const ipc::AttachAnswer& answer, int channel,
                           const std::function<void()>& meanwhile = {}) {
    UniqueFd connection(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    EXPECT_TRUE(connection.valid());
    ipc::FrameDecoder decoder(ipc::kMaxAttachFrame);
    auto frame = ReadFrame(connection.get(), decoder);
    EXPECT_TRUE(frame);
    if (!frame) return {};
    EXPECT_EQ(frame->type, ipc::FrameType::kIpcAttach);
    auto request = ipc::DecodeAttachRequest(frame->payload);
    EXPECT_TRUE(request);
    if (meanwhile) meanwhile();
    std::string bytes;
    ipc::AppendFrame(bytes, ipc::FrameType::kIpcAttached, ipc::EncodeAttachAnswer(answer));
    iovec iov{bytes.data(), bytes.size()};
    msghdr message{};
    message.msg_iov = &iov;
    message.msg_iovlen = 1;
    FdControl control(channel);
    if (channel >= 0) control.AttachTo(message);
    EXPECT_EQ(::sendmsg(connection.get(), &message, MSG_NOSIGNAL),
              static_cast<ssize_t>(bytes.size()));
    return request ? *request : ipc::AttachRequest{};
  }

 private:
  std::string dir_, path_;
  UniqueFd listener_;
};

// A job's channel whose agent says hello, takes the job's first request, gives its id to
// `asked`, and is killed with it unanswered (on its own thread, `first_agent`: join it once
// `asked` is set), and the agent restarted in its place, not attached yet.
struct AgentKilledWithARequest {
  AgentKilledWithARequest() : AgentKilledWithARequest(SocketPair()) {}

  JobSocketDouble job_socket;
  UniqueFd dying;
  const Channel channel;
  std::promise<std::uint32_t> asked;
  std::thread first_agent;
  FakeAgent restarted;

 private:
  static std::array<int, 2> SocketPair() {
    std::array<int, 2> pair{};
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair.data()) != 0) {
      throw std::runtime_error(std::string("socketpair: ") + std::strerror(errno));
    }
    return pair;
  }
  explicit AgentKilledWithARequest(std::array<int, 2> pair)
      : dying(pair[0]), channel(Channel::FromFd(pair[1])), first_agent([this] { Die(); }) {}

  void Die() {
    std::string hello;
    ipc::AppendFrame(hello, ipc::FrameType::kIpcHello,
                     ipc::EncodeChannelHello({"job.1", kSecret, job_socket.path()}));
    WriteAll(dying.get(), hello);
    ipc::FrameDecoder decoder;
    auto frame = ReadFrame(dying.get(), decoder);
    ASSERT_TRUE(frame);
    auto request = ipc::DecodeJobRequest(std::make_shared<const std::string>(frame->payload));
    ASSERT_TRUE(request);
    asked.set_value(request->id);
    dying.Reset();
  }
};

TEST(Reattach, AChannelWhoseAgentDiedReattachesFailsWhatWasInFlightAndKeepsItsLookups) {
  JobSocketDouble job_socket;
  int pair[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
  const Channel channel = Channel::FromFd(pair[1]);
  UniqueFd dying(pair[0]);

  // The first agent: its hello, a lookup answered, a request read and never answered.
  std::thread first_agent([&] {
    std::string hello;
    ipc::AppendFrame(hello, ipc::FrameType::kIpcHello,
                     ipc::EncodeChannelHello({"job.1", kSecret, job_socket.path()}));
    WriteAll(dying.get(), hello);
    ipc::FrameDecoder decoder;
    auto lookup = ReadFrame(dying.get(), decoder);
    ASSERT_TRUE(lookup);
    const auto request =
        ipc::DecodeJobRequest(std::make_shared<const std::string>(lookup->payload));
    ASSERT_TRUE(request);
    ASSERT_EQ(request->op, ipc::JobOp::kNameLookup);
    std::string reply;
    ipc::AppendFrame(reply, ipc::FrameType::kIpcReply,
                     ipc::EncodeJobReply(request->id, JobStatus::kOk, U32(7)));
    WriteAll(dying.get(), reply);
    ASSERT_TRUE(ReadFrame(dying.get(), decoder));  // the request lost with this agent
    dying.Reset();                                 // killed
  });

  // The restarted agent: a model whose lookups answer with the name the job asks for.
  FakeAgent restarted;
  std::promise<std::pair<std::string, std::uint32_t>> relookup;
  restarted.set_script([&](const ipc::JobRequest& request) -> std::optional<FakeAgent::Answer> {
    if (request.op != ipc::JobOp::kNameLookup) return std::nullopt;
    ipc::WireReader in(request.body);
    auto text = in.Bytes();
    auto wanted = in.U32();
    relookup.set_value({text.value_or(""), wanted.value_or(0)});
    return FakeAgent::Answer{.body = U32(wanted.value_or(0))};
  });
  auto attach = std::async(std::launch::async,
                           [&] { return job_socket.Serve({.ok = true}, restarted.TakeJobFd()); });

  auto found = channel.name_lookup("svc");
  ASSERT_TRUE(found) << found.error().ToString();
  EXPECT_EQ(*found, 7u);
  // Read by the first agent, which died without answering: a clear error, not a hang.
  auto lost = channel.port_allocate();
  ASSERT_FALSE(lost);
  EXPECT_EQ(lost.status(), JobStatus::kUnavailable);
  EXPECT_NE(lost.error().message.find("may or may not have run"), std::string::npos)
      << lost.error().message;
  first_agent.join();
  const auto attached = attach.get();
  EXPECT_EQ(attached.job, "job.1");
  EXPECT_EQ(attached.secret, kSecret);
  EXPECT_TRUE(channel.connected());

  // The next request goes to the restarted agent, after the lookup was redone under name 7.
  auto port = channel.port_allocate();
  ASSERT_TRUE(port) << port.error().ToString();
  auto redone = relookup.get_future();
  ASSERT_EQ(redone.wait_for(std::chrono::seconds(5)), std::future_status::ready);
  EXPECT_EQ(redone.get(), std::make_pair(std::string("svc"), 7u));
  EXPECT_EQ(restarted.requests_with_op(ipc::JobOp::kNameLookup), 1);
  EXPECT_EQ(restarted.requests_with_op(ipc::JobOp::kPortAllocate), 1);
}

// An agent restarted with the job's rights kept in its files (docs/ipc.md "Port homes that
// survive their agent") gives them back under the job's names: nothing is looked up again, and
// what the job asked the dead agent fails at once (the new agent never saw it), not a hang.
TEST(Reattach, AnAgentThatKeptTheJobsRightsFailsWhatWasInFlightAndLooksNothingUp) {
  JobSocketDouble job_socket;
  int pair[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
  const Channel channel = Channel::FromFd(pair[1]);
  UniqueFd dying(pair[0]);
  std::thread first_agent([&] {
    std::string hello;
    ipc::AppendFrame(hello, ipc::FrameType::kIpcHello,
                     ipc::EncodeChannelHello({"job.1", kSecret, job_socket.path()}));
    WriteAll(dying.get(), hello);
    ipc::FrameDecoder decoder;
    auto lookup = ReadFrame(dying.get(), decoder);
    ASSERT_TRUE(lookup);
    const auto request =
        ipc::DecodeJobRequest(std::make_shared<const std::string>(lookup->payload));
    ASSERT_TRUE(request);
    std::string reply;
    ipc::AppendFrame(reply, ipc::FrameType::kIpcReply,
                     ipc::EncodeJobReply(request->id, JobStatus::kOk, U32(7)));
    WriteAll(dying.get(), reply);
    ASSERT_TRUE(ReadFrame(dying.get(), decoder));  // the request lost with this agent
    dying.Reset();
  });
  FakeAgent restarted;
  auto attach = std::async(std::launch::async, [&] {
    return job_socket.Serve({.ok = true, .kept = true}, restarted.TakeJobFd());
  });
  auto found = channel.name_lookup("svc");
  ASSERT_TRUE(found) << found.error().ToString();
  auto lost = channel.port_allocate();
  ASSERT_FALSE(lost);
  EXPECT_EQ(lost.status(), JobStatus::kUnavailable);
  EXPECT_NE(lost.error().message.find("may or may not have run"), std::string::npos)
      << lost.error().message;
  first_agent.join();
  attach.get();
  auto port = channel.port_allocate();
  ASSERT_TRUE(port) << port.error().ToString();
  EXPECT_TRUE(channel.connected());
  EXPECT_EQ(restarted.requests_with_op(ipc::JobOp::kNameLookup), 0);
  // The answer's codec says which: kept and restored are two things.
  auto answer = ipc::DecodeAttachAnswer(ipc::EncodeAttachAnswer({.ok = true, .kept = true}));
  ASSERT_TRUE(answer);
  EXPECT_TRUE(answer->kept);
  EXPECT_FALSE(answer->restored);
}

// A destination agent restarted after a move's commit restores the job's state from the
// hand-off when the job re-attaches: what the job asked before is answered on the new channel,
// and nothing is looked up again (its names stand).
TEST(Reattach, AnAgentThatRestoredTheJobsStateAnswersWhatWasInFlight) {
  AgentKilledWithARequest killed;
  JobSocketDouble& job_socket = killed.job_socket;
  const Channel& channel = killed.channel;
  std::thread& first_agent = killed.first_agent;
  FakeAgent& restarted = killed.restarted;
  auto attach = std::async(std::launch::async, [&] {
    return job_socket.Serve({.ok = true, .restored = true}, restarted.TakeJobFd());
  });
  auto pending = std::async(std::launch::async, [&] { return channel.port_allocate(); });
  const std::uint32_t id = killed.asked.get_future().get();
  first_agent.join();
  attach.get();
  restarted.Reply(id, FakeAgent::Answer{.body = U32(42)});
  auto port = pending.get();
  ASSERT_TRUE(port) << port.error().ToString();
  EXPECT_EQ(*port, 42u);
  EXPECT_TRUE(channel.connected());
  EXPECT_EQ(restarted.requests_with_op(ipc::JobOp::kNameLookup), 0);
}

// A request a thread makes while the channel re-attaches (a moved job resumed under a
// destination agent that was killed and restarted: every thread wakes at once) never reached
// the dead agent. An agent that restored the job's state answers what it was handed, so such a
// request must go to it, or the thread waits for good (the fault campaign's counter stopped
// hearing its messages so, bench/README.md); to one that did not, it is "not sent", and
// Request sends it again: it never ran, so it runs once.
void RequestDuringReattach(const ipc::AttachAnswer& answer) {
  AgentKilledWithARequest killed;
  JobSocketDouble& job_socket = killed.job_socket;
  const Channel& channel = killed.channel;
  std::thread& first_agent = killed.first_agent;
  FakeAgent& restarted = killed.restarted;
  // Its own handle on the channel: on the old code it never returns, and is left behind.
  auto during_result = std::make_shared<std::promise<IpcResult<std::uint32_t>>>();
  auto during = during_result->get_future();
  auto attach = std::async(std::launch::async, [&] {
    return job_socket.Serve(answer, restarted.TakeJobFd(), [&] {
      // The reader re-attaches now (it holds the channel's writes): this thread files its
      // request and waits to write it.
      std::thread([channel, during_result] {
        during_result->set_value(channel.port_allocate());
      }).detach();
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    });
  });
  auto pending = std::async(std::launch::async, [&] { return channel.port_allocate(); });
  const std::uint32_t id = killed.asked.get_future().get();
  first_agent.join();
  attach.get();
  if (answer.restored) restarted.Reply(id, FakeAgent::Answer{.body = U32(42)});
  auto first = pending.get();
  EXPECT_EQ(first.has_value(), answer.restored);
  ASSERT_EQ(during.wait_for(std::chrono::seconds(5)), std::future_status::ready)
      << "a request made during the re-attach waits for an answer that never comes";
  auto second = during.get();
  ASSERT_TRUE(second) << second.error().ToString();
  EXPECT_EQ(restarted.requests_with_op(ipc::JobOp::kPortAllocate), 1)
      << "the new agent runs it once";
  EXPECT_TRUE(channel.connected());
}

TEST(Reattach, ARequestMadeWhileReattachingToAnAgentThatRestoredTheJobGoesToIt) {
  RequestDuringReattach({.ok = true, .restored = true});
}

TEST(Reattach, ARequestMadeWhileReattachingToAnAgentThatKeptTheRightsIsSentAgain) {
  RequestDuringReattach({.ok = true, .kept = true});
}

TEST(Reattach, ARefusedAttachClosesTheChannelWithTheAgentsReason) {
  JobSocketDouble job_socket;
  int pair[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
  const Channel channel = Channel::FromFd(pair[1]);
  {
    UniqueFd dying(pair[0]);
    std::string hello;
    ipc::AppendFrame(hello, ipc::FrameType::kIpcHello,
                     ipc::EncodeChannelHello({"job.1", kSecret, job_socket.path()}));
    WriteAll(dying.get(), hello);
  }
  // libtern tries a few times (an agent still adopting its jobs refuses too), then gives up.
  auto refusals = std::async(std::launch::async, [&] {
    for (int i = 0; i < 3; ++i) job_socket.Serve({.ok = false, .why = "wrong secret"}, -1);
  });
  auto port = channel.port_allocate();
  ASSERT_FALSE(port);
  EXPECT_EQ(port.status(), JobStatus::kUnavailable);
  EXPECT_NE(port.error().message.find("wrong secret"), std::string::npos) << port.error().message;
  EXPECT_FALSE(channel.connected());
  refusals.get();
}

TEST(Reattach, ACodecRefusesWhatIsCutShortOversizedOrTrailing) {
  const ipc::ChannelHello hello{"job.1", kSecret, "/run/tern/ipc/jobs.sock"};
  const std::string bytes = ipc::EncodeChannelHello(hello);
  auto decoded = ipc::DecodeChannelHello(bytes);
  ASSERT_TRUE(decoded);
  EXPECT_EQ(decoded->job, "job.1");
  EXPECT_EQ(decoded->socket_path, hello.socket_path);
  for (std::size_t cut = 0; cut < bytes.size(); ++cut) {
    EXPECT_FALSE(ipc::DecodeChannelHello(bytes.substr(0, cut))) << "cut at " << cut;
  }
  EXPECT_FALSE(ipc::DecodeChannelHello(bytes + "x"));
  EXPECT_FALSE(ipc::DecodeChannelHello(ipc::EncodeChannelHello({"job.1", "short", "/p"})));
  EXPECT_FALSE(ipc::DecodeChannelHello(ipc::EncodeChannelHello({"job.1", kSecret, "relative"})));
  EXPECT_FALSE(ipc::DecodeChannelHello(ipc::EncodeChannelHello({"../x", kSecret, "/p"})));
  EXPECT_FALSE(ipc::DecodeChannelHello(
      ipc::EncodeChannelHello({"job.1", kSecret, "/" + std::string(200, 'p')})));
  // A length field claiming more than the frame holds is refused without reading on.
  ipc::WireWriter huge;
  huge.U8(ipc::kAttachVersion);
  huge.U32(0xffffffffu);
  EXPECT_FALSE(ipc::DecodeAttachRequest(huge.out()));
  const std::string request = ipc::EncodeAttachRequest({"job.1", kSecret});
  for (std::size_t cut = 0; cut < request.size(); ++cut) {
    EXPECT_FALSE(ipc::DecodeAttachRequest(request.substr(0, cut))) << "cut at " << cut;
  }
  auto answer = ipc::DecodeAttachAnswer(ipc::EncodeAttachAnswer({false, "no"}));
  ASSERT_TRUE(answer);
  EXPECT_FALSE(answer->ok);
  EXPECT_EQ(answer->why, "no");
}

TEST(Reattach, TheAgentAcceptsOnlyTheJobsOwnProcessWithItsSecret) {
  const ipc::AttachRequest request{"job.1", kSecret};
  ipc::AttachFacts facts{.job_running_here = true, .secret = kSecret, .peer_in_job = true};
  EXPECT_FALSE(ipc::RefuseAttach(request, facts));
  auto wrong = facts;
  wrong.secret = std::string(ipc::kJobSecretSize, 'x');
  auto unknown = facts;
  unknown.job_running_here = false;
  auto no_secret = facts;
  no_secret.secret.reset();
  // "No such job" and "wrong secret" read the same: a prober learns nothing.
  ASSERT_TRUE(ipc::RefuseAttach(request, wrong));
  EXPECT_EQ(*ipc::RefuseAttach(request, wrong), *ipc::RefuseAttach(request, unknown));
  EXPECT_TRUE(ipc::RefuseAttach(request, no_secret));
  auto stranger = facts;
  stranger.peer_in_job = false;
  auto refused = ipc::RefuseAttach(request, stranger);
  ASSERT_TRUE(refused);
  EXPECT_NE(refused->find("not one of the job's processes"), std::string::npos);
  // A secret of another length never matches (nor is compared byte by byte past its end).
  EXPECT_TRUE(ipc::RefuseAttach({"job.1", kSecret + "k"}, facts));
}

}  // namespace
}  // namespace tern
