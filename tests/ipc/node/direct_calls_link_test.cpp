// DirectCalls on link ends (docs/ipc.md "Link operations direct"): the agents' I/O of direct
// connections, for real (a TCP listener per agent on 127.0.0.1, Unix socket pairs on one node),
// with their routers wired to each other in memory and their IpcDirect frames delivered through
// the io_context, as a peer link delivers them: never inside the sender's call.
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <tern/ipc/job_wire.hpp>
#include <tern/ipc/port_router.hpp>
#include <tern/unique_fd.hpp>

#include "../no_regions.hpp"
#include "direct_calls.hpp"

namespace tern::ipc {
namespace {

struct Answer {
  JobReply reply;
  UniqueFd fd;
};

// Agents for nodes 1..n: a router and a DirectCalls each.
class Agents {
 public:
  explicit Agents(std::uint64_t n) {
    for (std::uint64_t i = 1; i <= n; ++i) {
      routers[i] = std::make_unique<PortRouter>(i, regions);
    }
    for (auto& [a, router] : routers) {
      for (auto& [b, other] : routers) {
        if (a != b) router->NodeUp(b);
      }
    }
    for (std::uint64_t i = 1; i <= n; ++i) {
      auto send = [this, i](std::uint64_t to, std::vector<Frame> frames) {
        for (Frame& frame : frames) {
          boost::asio::post(io, [this, i, to, payload = std::move(frame.payload)] {
            auto handled = direct[to]->OnDirectFrame(i, payload);
            EXPECT_TRUE(handled) << (handled ? "" : handled.error().message);
          });
        }
        return true;
      };
      auto reply = [this](const std::string& job, std::string_view payload, UniqueFd fd) {
        auto decoded = DecodeJobReply(payload);
        ASSERT_TRUE(decoded);
        answers[job].push_back(Answer{*decoded, std::move(fd)});
      };
      direct[i] = std::make_shared<DirectCalls>(io, i, *routers[i], send, reply);
      direct[i]->SetHooks([](std::uint64_t) { return std::string("127.0.0.1"); },
                          [](const std::string&) { return 0; });
      direct[i]->Start();
    }
  }
  ~Agents() {
    for (auto& [node, calls] : direct) calls->Stop();
    io.restart();
    io.poll();
  }

  void Attach(std::uint64_t node, const std::string& job) {
    routers[node]->JobAttached(job);
    job_node[job] = node;
  }
  // A request the router serves, answered at once (the routers' frames delivered in memory),
  // then the job's direct connections checked against its rights, as IpcService does.
  JobReply Call(const std::string& job, JobOp op, const std::string& body) {
    const std::uint32_t id = next_request++;
    const std::uint64_t node = job_node[job];
    auto ok = routers[node]->JobRequest(job, EncodeJobRequest(id, op, body));
    EXPECT_TRUE(ok) << (ok ? "" : ok.error().message);
    Pump();
    direct[node]->CheckDirectRights(job);
    auto answer = Take(job, id);
    EXPECT_TRUE(answer) << "no answer to op " << static_cast<int>(op);
    return answer ? answer->reply : JobReply{id, JobStatus::kBadRequest, "no answer"};
  }
  // direct_open / direct_accept: served by DirectCalls; the answer may take the io_context.
  std::uint32_t AskDirect(const std::string& job, JobOp op, const std::string& body) {
    const std::uint32_t id = next_request++;
    direct[job_node[job]]->OnJobRequest(job, id, op, body);
    return id;
  }
  std::optional<Answer> Wait(const std::string& job, std::uint32_t id,
                             std::chrono::milliseconds limit = std::chrono::seconds(5)) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    for (;;) {
      if (auto answer = Take(job, id)) return answer;
      if (std::chrono::steady_clock::now() >= deadline) return std::nullopt;
      io.restart();
      io.run_for(std::chrono::milliseconds(5));
    }
  }

  void Pump() {
    for (bool busy = true; busy;) {
      busy = false;
      for (auto& [node, router] : routers) {
        auto actions = router->TakeActions();
        if (actions.empty()) continue;
        busy = true;
        for (auto& reply : actions.replies) {
          auto decoded = DecodeJobReply(reply.Whole());
          ASSERT_TRUE(decoded);
          answers[reply.job].push_back(Answer{*decoded, UniqueFd()});
        }
        for (auto& frame : actions.frames) {
          auto ok = routers[frame.node]->NodeFrame(node, frame.payload);
          ASSERT_TRUE(ok) << ok.error().message;
        }
      }
    }
  }

  boost::asio::io_context io;
  test_support::NoRegions regions;
  std::map<std::uint64_t, std::unique_ptr<PortRouter>> routers;
  std::map<std::uint64_t, std::shared_ptr<DirectCalls>> direct;
  std::map<std::string, std::uint64_t> job_node;
  std::map<std::string, std::deque<Answer>> answers;
  std::uint32_t next_request = 1;

 private:
  std::optional<Answer> Take(const std::string& job, std::uint32_t id) {
    auto& list = answers[job];
    for (auto it = list.begin(); it != list.end(); ++it) {
      if (it->reply.id != id) continue;
      Answer answer = std::move(*it);
      list.erase(it);
      return answer;
    }
    return std::nullopt;
  }
};

std::string U32s(std::initializer_list<std::uint32_t> values) {
  WireWriter w;
  for (auto v : values) w.U32(v);
  return w.Take();
}

std::uint32_t ReadU32(const std::string& body, std::size_t at = 0) {
  WireReader r(std::string_view(body).substr(at));
  return r.U32().value_or(0);
}

// A message to `to` carrying the link end `end` (moved).
std::string CarryEnd(std::uint32_t to, std::uint32_t end) {
  SendRequest request;
  request.message.destination = to;
  request.message.items.push_back(Item::Bytes("end"));
  request.message.items.push_back(Item::Port(end, Disposition::kMoveLinkEnd));
  return EncodeSendRequest(request);
}

// Hands `end` of `from` to `job` in a port message; its name there.
std::uint32_t HandEnd(Agents& agents, const std::string& from, std::uint32_t end,
                      const std::string& job) {
  const auto inbox = ReadU32(agents.Call(job, JobOp::kPortAllocate, U32s({0})).body);
  const auto send = ReadU32(agents.Call(job, JobOp::kMakeSend, U32s({inbox})).body);
  const std::string text = "inbox-" + std::to_string(agents.next_request);
  WireWriter name;
  name.Bytes(text);
  name.U32(send);
  EXPECT_EQ(agents.Call(job, JobOp::kNameRegister, name.out()).status, JobStatus::kOk);
  WireWriter lookup;
  lookup.Bytes(text);
  const auto to = ReadU32(agents.Call(from, JobOp::kNameLookup, lookup.out()).body);
  EXPECT_EQ(agents.Call(from, JobOp::kSend, CarryEnd(to, end)).status, JobStatus::kOk);
  auto got = agents.Call(job, JobOp::kReceive, U32s({inbox, 0}));
  EXPECT_EQ(got.status, JobStatus::kOk) << got.body;
  WireReader in(got.body);
  auto message = in.ReadMessage();
  EXPECT_TRUE(message && message->items.size() == 2);
  return message && message->items.size() == 2 ? message->items[1].name : 0;
}

// Whether `fd` has something to read (or its end) within `ms`.
bool Readable(int fd, int ms) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, ms) == 1;
}

// Bytes written on one end arrive on the other.
void ExpectConnected(int from, int to, const std::string& bytes) {
  ASSERT_EQ(::send(from, bytes.data(), bytes.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(bytes.size()));
  ASSERT_TRUE(Readable(to, 2000));
  std::string got(bytes.size(), '\0');
  EXPECT_EQ(::recv(to, got.data(), got.size(), MSG_WAITALL), static_cast<ssize_t>(bytes.size()));
  EXPECT_EQ(got, bytes);
}

// End of file within 2 s: the agents revoked the connection.
bool Revoked(int fd) {
  if (!Readable(fd, 2000)) return false;
  char byte = 0;
  return ::recv(fd, &byte, 1, 0) == 0;
}

// A link made on node 1, whose end s goes to "sender" on node 3 and r to "receiver" on node 2:
// the sender's ask goes to the link's home, which passes it to the receiver's node.
struct LinkAcrossThreeNodes {
  LinkAcrossThreeNodes() : agents(3) {
    agents.Attach(1, "maker");
    agents.Attach(2, "receiver");
    agents.Attach(3, "sender");
    auto created = agents.Call("maker", JobOp::kLinkCreate, "");
    EXPECT_EQ(created.status, JobStatus::kOk);
    s = HandEnd(agents, "maker", ReadU32(created.body), "sender");
    r = HandEnd(agents, "maker", ReadU32(created.body, 4), "receiver");
  }
  Agents agents;
  std::uint32_t s = 0;
  std::uint32_t r = 0;
};

TEST(DirectCallsLink, OpenOnAnEndConnectsToThePeerEndsHolderWhichAcceptedAndLeavingRevokesIt) {
  LinkAcrossThreeNodes link;
  Agents& agents = link.agents;
  const auto accept = agents.AskDirect("receiver", JobOp::kDirectAccept, U32s({link.r, 5000}));
  const auto open = agents.AskDirect("sender", JobOp::kDirectOpen, U32s({link.s}));
  auto client = agents.Wait("sender", open);
  ASSERT_TRUE(client);
  ASSERT_EQ(client->reply.status, JobStatus::kOk) << client->reply.body;
  auto server = agents.Wait("receiver", accept);
  ASSERT_TRUE(server);
  ASSERT_EQ(server->reply.status, JobStatus::kOk) << server->reply.body;
  ASSERT_TRUE(client->fd.valid() && server->fd.valid());
  ExpectConnected(client->fd.get(), server->fd.get(), "offer");
  ExpectConnected(server->fd.get(), client->fd.get(), "matched");
  // Each end stands on its link end: the receiver's too (its record is checked like the
  // sender's), so an unrelated request of either changes nothing.
  agents.Call("receiver", JobOp::kPortAllocate, U32s({0}));
  agents.Call("sender", JobOp::kPortAllocate, U32s({0}));
  ASSERT_FALSE(Readable(server->fd.get(), 50));
  ExpectConnected(client->fd.get(), server->fd.get(), "still");

  // The sender's end leaves it in a message: the connection is revoked for both.
  HandEnd(agents, "sender", link.s, "receiver");
  EXPECT_TRUE(Revoked(server->fd.get()));
  EXPECT_TRUE(Revoked(client->fd.get()));
}

TEST(DirectCallsLink, TheReceiverSendingItsEndAwayRevokesTheConnectionAndStopsAccepting) {
  LinkAcrossThreeNodes link;
  Agents& agents = link.agents;
  const auto accept = agents.AskDirect("receiver", JobOp::kDirectAccept, U32s({link.r, 5000}));
  const auto open = agents.AskDirect("sender", JobOp::kDirectOpen, U32s({link.s}));
  auto client = agents.Wait("sender", open);
  auto server = agents.Wait("receiver", accept);
  ASSERT_TRUE(client && server);
  ASSERT_EQ(client->reply.status, JobStatus::kOk) << client->reply.body;
  const auto waiting = agents.AskDirect("receiver", JobOp::kDirectAccept, U32s({link.r, 5000}));
  agents.Attach(2, "other");
  HandEnd(agents, "receiver", link.r, "other");
  EXPECT_TRUE(Revoked(client->fd.get()));
  auto stopped = agents.Wait("receiver", waiting);
  ASSERT_TRUE(stopped);
  EXPECT_EQ(stopped->reply.status, JobStatus::kInvalidName);
  // The end's new holder never accepted: the next open is refused.
  auto refused =
      agents.Wait("sender", agents.AskDirect("sender", JobOp::kDirectOpen, U32s({link.s})));
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->reply.status, JobStatus::kUnavailable);
  EXPECT_FALSE(refused->fd.valid());
}

TEST(DirectCallsLink, OpenIsRefusedWhenThePeerEndsHolderDidNotAccept) {
  LinkAcrossThreeNodes link;
  Agents& agents = link.agents;
  auto refused =
      agents.Wait("sender", agents.AskDirect("sender", JobOp::kDirectOpen, U32s({link.s})));
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->reply.status, JobStatus::kUnavailable) << refused->reply.body;
  EXPECT_FALSE(refused->fd.valid());
  // Names that are neither rights nor link ends of the job are refused at once.
  auto invalid = agents.Wait("sender", agents.AskDirect("sender", JobOp::kDirectOpen, U32s({999})));
  ASSERT_TRUE(invalid);
  EXPECT_EQ(invalid->reply.status, JobStatus::kInvalidName);
  invalid =
      agents.Wait("sender", agents.AskDirect("sender", JobOp::kDirectAccept, U32s({999, 100})));
  ASSERT_TRUE(invalid);
  EXPECT_EQ(invalid->reply.status, JobStatus::kInvalidName);
  // Accepting on its own end does not make the sender its own peer.
  const auto own = agents.AskDirect("sender", JobOp::kDirectAccept, U32s({link.s, 5000}));
  refused = agents.Wait("sender", agents.AskDirect("sender", JobOp::kDirectOpen, U32s({link.s})));
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->reply.status, JobStatus::kUnavailable);
  EXPECT_FALSE(agents.Wait("sender", own, std::chrono::milliseconds(50)));
}

// Both holders on node 2 (the link homed on node 1): a Unix socket pair, made there.
TEST(DirectCallsLink, TwoHoldersOnOneNodeGetASocketPair) {
  Agents agents(2);
  agents.Attach(1, "maker");
  agents.Attach(2, "receiver");
  agents.Attach(2, "sender");
  auto created = agents.Call("maker", JobOp::kLinkCreate, "");
  ASSERT_EQ(created.status, JobStatus::kOk);
  const auto s = HandEnd(agents, "maker", ReadU32(created.body), "sender");
  const auto r = HandEnd(agents, "maker", ReadU32(created.body, 4), "receiver");
  const auto accept = agents.AskDirect("receiver", JobOp::kDirectAccept, U32s({r, 5000}));
  auto client = agents.Wait("sender", agents.AskDirect("sender", JobOp::kDirectOpen, U32s({s})));
  auto server = agents.Wait("receiver", accept);
  ASSERT_TRUE(client && server);
  ASSERT_EQ(client->reply.status, JobStatus::kOk) << client->reply.body;
  ASSERT_EQ(server->reply.status, JobStatus::kOk) << server->reply.body;
  int domain = 0;
  socklen_t size = sizeof domain;
  ASSERT_EQ(::getsockopt(client->fd.get(), SOL_SOCKET, SO_DOMAIN, &domain, &size), 0);
  EXPECT_EQ(domain, AF_UNIX);
  ExpectConnected(client->fd.get(), server->fd.get(), "offer");
}

}  // namespace
}  // namespace tern::ipc
