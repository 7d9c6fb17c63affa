// Sends that wait for their home (docs/ipc.md): SequencedOutbox and SequencedInbox alone, and
// with two PortRouters between them over a link that drops what is on it, whose home is killed
// and restored from its journal: a job's messages arrive once each, in order.
#include <gtest/gtest.h>

#include <deque>
#include <map>
#include <numeric>
#include <random>
#include <set>
#include <tern/ipc/job_wire.hpp>
#include <tern/ipc/peer_sequence.hpp>
#include <tern/ipc/port_router.hpp>

#include "no_regions.hpp"

namespace tern::ipc {
namespace {

using Clock = SequencedOutbox::Clock;

using Payloads = std::vector<SequencedOutbox::Payload>;

std::vector<std::uint64_t> Seqs(const Payloads& payloads) {
  std::vector<std::uint64_t> seqs;
  for (const auto& payload : payloads) seqs.push_back(ReadSequenceTrailer(*payload)->seq);
  return seqs;
}

// Adds `payload` to `out`, into `now` when it leaves at once (the link is up), as the agent does.
void Add(SequencedOutbox& out, std::string payload, Payloads& now) {
  auto added = out.Add(std::move(payload));
  if (out.up()) now.push_back(added.payload);
}

TEST(SequencedOutbox, HoldsWhileDownAndSendsEverythingNotAcknowledgedInOrderWhenUp) {
  SequencedOutbox out(7, 1 << 20);
  const auto t0 = Clock::now();
  Payloads now;
  Add(out, "a", now);  // a fresh outbox has no link yet
  EXPECT_TRUE(now.empty());
  out.LinkUp(now);
  EXPECT_EQ(Seqs(now), (std::vector<std::uint64_t>{1}));
  now.clear();
  Add(out, "b", now);
  Add(out, "c", now);
  EXPECT_EQ(Seqs(now), (std::vector<std::uint64_t>{2, 3}));
  out.Acked({7, 1});
  out.LinkDown(t0);
  now.clear();
  Add(out, "d", now);
  EXPECT_TRUE(now.empty());
  EXPECT_EQ(out.held(), 3u);
  out.LinkUp(now);
  ASSERT_EQ(Seqs(now), (std::vector<std::uint64_t>{2, 3, 4}));
  std::string first = *now[0];
  first.resize(first.size() - kSequenceTrailerBytes);
  EXPECT_EQ(first, "b");
  out.Acked({8, 4});  // another epoch's: nothing
  EXPECT_EQ(out.held(), 3u);
  out.Acked({7, 4});
  EXPECT_EQ(out.held(), 0u);
  EXPECT_EQ(out.held_bytes(), 0u);
}

TEST(SequencedOutbox, IsFullPastItsBoundUntilAcknowledged) {
  SequencedOutbox out(1, 100);
  Payloads now;
  Add(out, std::string(60, 'x'), now);
  EXPECT_FALSE(out.full());
  Add(out, std::string(60, 'y'), now);
  EXPECT_TRUE(out.full());
  EXPECT_EQ(out.held_bytes(), 120 + 2 * kSequenceTrailerBytes);
  out.LinkUp(now);
  out.Acked({1, 1});
  EXPECT_FALSE(out.full());
}

// A link that a probe brought up and that breaks at once (a peer still holding its link to
// this agent's killed predecessor closes each new one: the fault campaign saw a dial every ~2 ms
// for 50 ms) is asked for again after the probe interval, not at once; one that was up for a
// while is asked for at once.
TEST(SequencedOutbox, ALinkThatBreaksAsSoonAsItIsUpIsProbedOncePerInterval) {
  SequencedOutbox out(5, 1 << 20);
  Payloads now;
  const auto t0 = Clock::now();
  Add(out, "m", now);
  EXPECT_TRUE(out.ProbeDue(t0));
  out.LinkUp(now);
  out.LinkDown(t0 + std::chrono::milliseconds(2));
  EXPECT_FALSE(out.ProbeDue(t0 + std::chrono::milliseconds(2)));
  EXPECT_TRUE(out.ProbeDue(t0 + SequencedOutbox::kProbeEvery));
  out.LinkUp(now);
  const auto later = t0 + 10 * SequencedOutbox::kProbeEvery;
  out.LinkDown(later);
  EXPECT_TRUE(out.ProbeDue(later)) << "up for long: asked for again at once";
}

TEST(SequencedOutbox, ProbesOncePerIntervalAndGivesUpOnlyAfterTheLimitWithoutALink) {
  SequencedOutbox out(5, 1 << 20);
  Payloads now;
  out.LinkUp(now);
  const auto t0 = Clock::now();
  EXPECT_FALSE(out.ProbeDue(t0));  // up
  out.LinkDown(t0);
  EXPECT_FALSE(out.ProbeDue(t0));  // nothing held
  Add(out, "m", now);
  EXPECT_TRUE(out.ProbeDue(t0));
  EXPECT_FALSE(out.ProbeDue(t0 + SequencedOutbox::kProbeEvery / 2));
  EXPECT_TRUE(out.ProbeDue(t0 + SequencedOutbox::kProbeEvery));
  // Membership calls a node dead after 10 s by default: still held then.
  EXPECT_FALSE(out.GiveUpDue(t0 + std::chrono::seconds(30)));
  EXPECT_FALSE(out.GiveUpDue(t0 + SequencedOutbox::kGiveUpAfter - std::chrono::seconds(1)));
  EXPECT_TRUE(out.GiveUpDue(t0 + SequencedOutbox::kGiveUpAfter));
  EXPECT_EQ(out.GiveUp(), 1u);
  EXPECT_EQ(out.held(), 0u);
  // A new epoch from 1: the receiver takes it as a sender that starts afresh.
  EXPECT_EQ(out.epoch(), 6u);
  out.LinkUp(now);
  now.clear();
  Add(out, "n", now);
  EXPECT_EQ(*ReadSequenceTrailer(*now.at(0)), (SequenceTag{6, 1}));
  EXPECT_EQ(out.Add("o").tag, (SequenceTag{6, 2})) << "Add says the tag it gave";
}

TEST(SequencedInbox, DeliversTheNextDropsDuplicatesAndGaps) {
  SequencedInbox in;
  EXPECT_EQ(in.Take({3, 5}), SequencedInbox::Verdict::kDeliver);  // a peer not heard from yet
  EXPECT_EQ(in.Take({3, 5}), SequencedInbox::Verdict::kDuplicate);
  EXPECT_EQ(in.Take({3, 4}), SequencedInbox::Verdict::kDuplicate);
  EXPECT_EQ(in.Take({3, 7}), SequencedInbox::Verdict::kGap);
  EXPECT_EQ(in.Take({3, 6}), SequencedInbox::Verdict::kDeliver);
  EXPECT_EQ(*in.delivered(), (SequenceTag{3, 6}));
  // A new epoch (the sender restarted, or gave this node up) starts at 1, never later.
  EXPECT_EQ(in.Take({9, 2}), SequencedInbox::Verdict::kGap);
  EXPECT_EQ(in.Take({9, 1}), SequencedInbox::Verdict::kDeliver);
  // Restored from a journal: what it holds is a duplicate.
  SequencedInbox restored(SequenceTag{9, 1});
  EXPECT_EQ(restored.Take({9, 1}), SequencedInbox::Verdict::kDuplicate);
  EXPECT_EQ(restored.Take({9, 2}), SequencedInbox::Verdict::kDeliver);
}

TEST(SequenceWire, TrailerAndAcknowledgementRoundTripAndRejectJunk) {
  std::string payload = "body";
  AppendSequenceTrailer(payload, {0x0102030405060708, 42});
  EXPECT_EQ(payload.size(), 4 + kSequenceTrailerBytes);
  EXPECT_EQ(*ReadSequenceTrailer(payload), (SequenceTag{0x0102030405060708, 42}));
  EXPECT_FALSE(ReadSequenceTrailer("short"));
  std::string zero = "x";
  AppendSequenceTrailer(zero, {1, 0});
  EXPECT_FALSE(ReadSequenceTrailer(zero));  // no frame is numbered 0
  EXPECT_EQ(*ParseSequenceAck(EncodeSequenceAck({4, 9})), (SequenceTag{4, 9}));
  EXPECT_EQ(ParseSequenceAck(EncodeSequenceAck({0, 0}))->seq, 0u);  // a probe
  EXPECT_FALSE(ParseSequenceAck("toolong-toolong-toolong"));
}

using test_support::NoRegions;

// Two agents as IpcService drives them, without sockets: each router's frames go through a
// SequencedOutbox per peer onto a wire that the test cuts (dropping what is on it); what arrives
// goes through a SequencedInbox, is journalled with its turn, and is acknowledged after that.
class TwoAgents {
 public:
  TwoAgents() {
    for (std::uint64_t node : {1, 2}) Start(node, "");
    Reconnect();
  }

  struct Agent {
    std::unique_ptr<PortRouter> router;
    std::string journal;
    std::map<std::uint64_t, SequencedOutbox> out;
    std::map<std::uint64_t, SequencedInbox> in;
    std::set<std::uint64_t> acks_due;
    bool announced = false;
  };
  struct OnWire {
    bool ack = false;
    std::string payload;
  };

  void Start(std::uint64_t node, const std::string& journal) {
    Agent& agent = agents[node];
    agent = Agent{};
    agent.router = std::make_unique<PortRouter>(node, regions);
    std::vector<std::pair<SequenceTag, SequencedOutbox::Payload>> unacked;
    const std::uint64_t peer = 3 - node;
    if (!journal.empty()) {
      auto restored = agent.router->RestoreDurable(journal);
      ASSERT_TRUE(restored) << restored.error().message;
      for (const auto& sent : restored->unacked[peer]) unacked.emplace_back(sent.tag, sent.payload);
    }
    agent.router->KeepDurableState();
    agent.out.try_emplace(peer, ++epochs * 1000, 1 << 20, unacked);
    auto known = agent.router->PeerDeliveries();
    agent.in.try_emplace(peer, known.contains(peer) ? std::optional(known[peer]) : std::nullopt);
    agent.router->NodeUp(peer);
    Turn(node);
  }
  // The node's agent is killed: what its router held in memory and what was on its wires is
  // gone; a new one starts from its journal, and the links come back.
  void Restart(std::uint64_t node) {
    Cut();
    const std::string journal = agents[node].journal;
    Start(node, journal);
    Reconnect();
  }
  // The link breaks, as IpcService::NodeDown does it: frames held, receives across it answered.
  void Cut() {
    wire.clear();
    for (auto& [node, agent] : agents) {
      auto& out = agent.out.begin()->second;
      if (!out.up()) continue;
      out.LinkDown(Clock::now());
      agent.router->NodeUnreachable(3 - node);
    }
    for (std::uint64_t node : {1, 2}) Turn(node);
  }
  void Reconnect() {
    for (auto& [node, agent] : agents) {
      if (!agent.announced) {  // as IpcService: "I started afresh", after what it sends again
        agent.announced = true;
        auto added = agent.out.begin()->second.Add(std::string());
        agent.router->JournalSent(3 - node, added.tag, added.payload);
      }
      Payloads again;
      agent.out.begin()->second.LinkUp(again);
      for (auto& payload : again) wire[{node, 3 - node}].push_back({false, *payload});
    }
  }
  // One turn of `node`'s agent: durable write first, then its frames and acknowledgements.
  void Turn(std::uint64_t node) {
    Agent& agent = agents[node];
    auto actions = agent.router->TakeActions();
    std::vector<std::pair<std::uint64_t, SequencedOutbox::Payload>> now;
    for (auto& frame : actions.frames) {
      auto& out = agent.out.at(frame.node);
      auto added = out.Add(std::move(frame.payload));
      agent.router->JournalSent(frame.node, added.tag, added.payload);
      if (out.up()) now.emplace_back(frame.node, added.payload);
    }
    auto durable = agent.router->TakeDurable();
    if (durable.rewrite_journal) agent.journal.clear();
    for (const auto& piece : durable.journal) agent.journal.append(piece);
    for (auto& reply : actions.replies) {
      auto decoded = DecodeJobReply(reply.Whole());
      ASSERT_TRUE(decoded);
      replies[reply.job].push_back(*decoded);
    }
    for (auto& [to, payload] : now) wire[{node, to}].push_back({false, *payload});
    for (std::uint64_t peer : std::exchange(agent.acks_due, {})) {
      wire[{node, peer}].push_back({true, EncodeSequenceAck(*agent.in.at(peer).delivered())});
    }
  }
  // Delivers up to `max` of what is on the wires (all: until quiet).
  void Pump(int max = 1 << 30) {
    for (int n = 0; n < max; ++n) {
      auto next = std::find_if(wire.begin(), wire.end(), [](auto& w) { return !w.second.empty(); });
      if (next == wire.end()) return;
      const auto [from, to] = next->first;
      OnWire item = std::move(next->second.front());
      next->second.pop_front();
      Agent& agent = agents[to];
      if (item.ack) {
        const auto tag = *ParseSequenceAck(item.payload);
        agent.out.at(from).Acked(tag);
        agent.router->JournalAcked(from, tag);
        Turn(to);
        continue;
      }
      const auto tag = *ReadSequenceTrailer(item.payload);
      item.payload.resize(item.payload.size() - kSequenceTrailerBytes);
      switch (agent.in.at(from).Take(tag)) {
        case SequencedInbox::Verdict::kDeliver: {
          agent.acks_due.insert(from);
          agent.router->PeerDelivered(from, tag);
          if (item.payload.empty()) {
            agent.router->PeerRestarted(from, agent.out.at(from).Unacked());
            break;
          }
          auto ok = agent.router->NodeFrame(from, item.payload);
          ASSERT_TRUE(ok) << ok.error().message;
          break;
        }
        case SequencedInbox::Verdict::kDuplicate:
          ++duplicates;
          agent.acks_due.insert(from);
          break;
        case SequencedInbox::Verdict::kGap:
          break;
      }
      Turn(to);
    }
  }
  std::uint32_t Ask(std::uint64_t node, const std::string& job, JobOp op, const std::string& body) {
    const std::uint32_t id = next_request++;
    auto ok = agents[node].router->JobRequest(job, EncodeJobRequest(id, op, body));
    EXPECT_TRUE(ok);
    Turn(node);
    return id;
  }
  std::optional<JobReply> Answer(const std::string& job, std::uint32_t id) {
    for (auto it = replies[job].begin(); it != replies[job].end(); ++it) {
      if (it->id != id) continue;
      JobReply reply = *it;
      replies[job].erase(it);
      return reply;
    }
    return std::nullopt;
  }

  NoRegions regions;
  std::map<std::uint64_t, Agent> agents;
  std::map<std::pair<std::uint64_t, std::uint64_t>, std::deque<OnWire>> wire;
  std::map<std::string, std::deque<JobReply>> replies;
  std::uint32_t next_request = 1;
  std::uint64_t epochs = 0;
  int duplicates = 0;
};

std::string U32(std::uint32_t v) {
  WireWriter w;
  w.U32(v);
  return w.Take();
}

// A job on node 2 sends numbered messages to a port homed on node 1 while the link between the
// agents is cut at random points (what is on it is lost, acknowledgements too) and either agent
// is killed and restored from its journal; every send is answered ok, and the receiver on node 1
// takes each message once, in order.
TEST(SequencedSends, ArriveOnceInOrderAcrossCutsAndRestartsOfEitherAgent) {
  for (std::uint32_t seed = 1; seed <= 20; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    TwoAgents net;
    std::mt19937 random(seed);
    net.agents[1].router->JobAttached("receiver");
    net.agents[2].router->JobAttached("sender");
    const auto allocated = net.Ask(1, "receiver", JobOp::kPortAllocate, U32(4096));
    net.Pump();
    auto port_reply = net.Answer("receiver", allocated);
    ASSERT_TRUE(port_reply);
    const std::uint32_t port = *WireReader(port_reply->body).U32();
    const auto made = net.Ask(1, "receiver", JobOp::kMakeSend, U32(port));
    net.Pump();
    auto made_reply = net.Answer("receiver", made);
    ASSERT_TRUE(made_reply);
    net.Ask(1, "receiver", JobOp::kNameRegister, [&] {
      WireWriter w;
      w.Bytes("counter");
      w.U32(*WireReader(made_reply->body).U32());
      return w.Take();
    }());
    net.Pump();
    net.replies.clear();
    const auto looked = net.Ask(2, "sender", JobOp::kNameLookup, [] {
      WireWriter w;
      w.Bytes("counter");
      return w.Take();
    }());
    net.Pump();
    auto lookup = net.Answer("sender", looked);
    ASSERT_TRUE(lookup && lookup->status == JobStatus::kOk) << (lookup ? lookup->body : "none");
    const std::uint32_t send_right = *WireReader(lookup->body).U32();

    constexpr int kMessages = 60;
    std::map<std::uint32_t, int> send_requests;  // request id -> number
    std::set<std::uint32_t> unanswerable;
    for (int n = 1; n <= kMessages; ++n) {
      SendRequest request;
      request.message.destination = send_right;
      request.message.items.push_back(Item::Bytes(std::to_string(n)));
      send_requests[net.Ask(2, "sender", JobOp::kSend, EncodeSendRequest(request))] = n;
      net.Pump(static_cast<int>(random() % 3));
      switch (random() % 10) {
        case 0:
          net.Cut();
          break;
        case 1:
          net.Reconnect();
          break;
        case 2:
          net.Restart(1);  // the home: what it journalled stays, what it had not is sent again
          break;
        case 3:
          // The sender's agent: its frames not acknowledged are in its journal and go again,
          // but the sends it had not answered die with it (the job hears "the agent went
          // away"): only their messages are checked.
          for (auto it = send_requests.begin(); it != send_requests.end();) {
            if (auto answer = net.Answer("sender", it->first)) {
              EXPECT_EQ(answer->status, JobStatus::kOk) << "send " << it->second;
              it = send_requests.erase(it);
            } else {
              ++it;
            }
          }
          for (auto& [request, number] : send_requests) unanswerable.insert(request);
          net.Restart(2);
          break;
        default:
          break;
      }
    }
    net.Reconnect();
    net.Pump();
    for (const auto& [request, n] : send_requests) {
      auto answer = net.Answer("sender", request);
      if (unanswerable.contains(request)) continue;
      ASSERT_TRUE(answer) << "send " << n << " unanswered";
      EXPECT_EQ(answer->status, JobStatus::kOk) << "send " << n << ": " << answer->body;
    }
    // Everything queued at the home, once, in order.
    std::vector<int> numbers;
    for (;;) {
      WireWriter body;
      body.U32(port);
      body.U32(0);  // no wait
      const auto taken = net.Ask(1, "receiver", JobOp::kReceive, body.Take());
      net.Pump();
      auto got = net.Answer("receiver", taken);
      ASSERT_TRUE(got);
      if (got->status != JobStatus::kOk) break;
      WireReader in(got->body);
      auto message = in.ReadMessage();
      ASSERT_TRUE(message && !message->items.empty());
      numbers.push_back(std::stoi(std::string(message->items[0].bytes())));
    }
    std::vector<int> expected(kMessages);
    std::iota(expected.begin(), expected.end(), 1);
    EXPECT_EQ(numbers, expected);
  }
}

// The two tests below: a counter on node 1 makes a port and registers a send right to it under
// `name`, a sender on node 1 looks that name up, and the counter moves to node 2 with its
// rights while the port stays homed on node 1.
struct CounterAwayFromItsPort {
  std::uint32_t port = 0;
  std::uint32_t sender_right = 0;  // the sender's send right to the port
};

void MoveACounterAwayFromItsPort(TwoAgents& net, const std::string& name,
                                 CounterAwayFromItsPort& out) {
  net.agents[1].router->JobAttached("counter");
  net.agents[1].router->JobAttached("sender");
  const auto allocated = net.Ask(1, "counter", JobOp::kPortAllocate, U32(0));
  net.Pump();
  out.port = *WireReader(net.Answer("counter", allocated)->body).U32();
  const auto made = net.Ask(1, "counter", JobOp::kMakeSend, U32(out.port));
  net.Pump();
  const std::uint32_t send = *WireReader(net.Answer("counter", made)->body).U32();
  net.Ask(1, "counter", JobOp::kNameRegister, [&] {
    WireWriter w;
    w.Bytes(name);
    w.U32(send);
    return w.Take();
  }());
  net.Pump();
  const auto looked = net.Ask(1, "sender", JobOp::kNameLookup, [&] {
    WireWriter w;
    w.Bytes(name);
    return w.Take();
  }());
  net.Pump();
  out.sender_right = *WireReader(net.Answer("sender", looked)->body).U32();
  auto exported = net.agents[1].router->ExportJob("counter", 2);
  ASSERT_EQ(exported.outcome, PortRouter::ExportOutcome::kExported) << exported.state;
  net.agents[1].router->JobGone("counter");
  net.agents[2].router->JobAttached("counter");
  ASSERT_TRUE(net.agents[2].router->ImportJob("counter", exported.state));
  net.Turn(1);
  net.Turn(2);
  net.Pump();
}

// The counter (on node 2) receives from `port`; returns the request's id.
std::uint32_t AskReceive(TwoAgents& net, std::uint32_t port, std::uint32_t timeout_ms) {
  WireWriter w;
  w.U32(port);
  w.U32(timeout_ms);
  return net.Ask(2, "counter", JobOp::kReceive, w.Take());
}

// The sender sends `text` to the counter's port; the send must succeed.
void SendToCounter(TwoAgents& net, const CounterAwayFromItsPort& counter, const std::string& text) {
  SendRequest request;
  request.message.destination = counter.sender_right;
  request.message.items.push_back(Item::Bytes(text));
  const auto sent = net.Ask(1, "sender", JobOp::kSend, EncodeSendRequest(request));
  net.Pump();
  ASSERT_EQ(net.Answer("sender", sent)->status, JobStatus::kOk);
}

// A job on node 2 receives (waiting) from a port homed on node 1; node 2's agent is killed and
// restarted, which breaks the link. The receive that died with the agent must not take the next
// message: the next receive of the job gets it.
TEST(SequencedSends, AReceiveThatDiedWithItsAgentTakesNoMessage) {
  TwoAgents net;
  CounterAwayFromItsPort counter;
  ASSERT_NO_FATAL_FAILURE(MoveACounterAwayFromItsPort(net, "counter", counter));
  const auto receive = [&](std::uint32_t timeout) {
    return AskReceive(net, counter.port, timeout);
  };
  const auto waiting = receive(60000);
  net.Pump();
  EXPECT_FALSE(net.Answer("counter", waiting));  // it waits at node 1
  net.Restart(2);
  net.Pump();
  ASSERT_NO_FATAL_FAILURE(SendToCounter(net, counter, "42"));
  const auto again = receive(60000);
  net.Pump();
  auto got = net.Answer("counter", again);
  ASSERT_TRUE(got) << "the message went to the receive that died";
  ASSERT_EQ(got->status, JobStatus::kOk) << got->body;
  auto message = WireReader(got->body).ReadMessage();
  ASSERT_TRUE(message && !message->items.empty());
  EXPECT_EQ(message->items[0].bytes(), "42");
}

// The same job's receive waits at node 1, the port's home, whose agent is killed and restarted:
// the receive fails (its waiter died with the agent) once the new agent says it started afresh,
// and the next receive gets the next message. A receive whose request the old agent never
// acknowledged is run by the new one instead.
TEST(SequencedSends, AReceiveWaitingAtARestartedHomeFailsAndTheNextGetsTheMessage) {
  for (bool acknowledged : {true, false}) {
    SCOPED_TRACE(acknowledged ? "request acknowledged by the old agent" : "request not run");
    TwoAgents net;
    CounterAwayFromItsPort counter;
    ASSERT_NO_FATAL_FAILURE(MoveACounterAwayFromItsPort(net, "c", counter));
    const auto receive = [&](std::uint32_t timeout) {
      return AskReceive(net, counter.port, timeout);
    };
    if (!acknowledged) net.Cut();  // the request waits in node 2's outbox
    const auto waiting = receive(60000);
    net.Pump();
    EXPECT_FALSE(net.Answer("counter", waiting));
    net.Restart(1);
    net.Pump();
    auto failed = net.Answer("counter", waiting);
    if (acknowledged) {
      ASSERT_TRUE(failed) << "the receive waits for a waiter that died";
      EXPECT_EQ(failed->status, JobStatus::kUnavailable) << failed->body;
    } else {
      EXPECT_FALSE(failed) << "the new agent runs the receive: it waits";
    }
    // A message from a job on node 1 (the port's home): to the receive the new agent runs, or
    // to the next one.
    ASSERT_NO_FATAL_FAILURE(SendToCounter(net, counter, "7"));
    const auto taker = acknowledged ? receive(60000) : waiting;
    net.Pump();
    auto got = net.Answer("counter", taker);
    ASSERT_TRUE(got) << "the message went to a receive that is gone";
    ASSERT_EQ(got->status, JobStatus::kOk) << got->body;
    auto message = WireReader(got->body).ReadMessage();
    ASSERT_TRUE(message && !message->items.empty());
    EXPECT_EQ(message->items[0].bytes(), "7");
  }
}

}  // namespace
}  // namespace tern::ipc
