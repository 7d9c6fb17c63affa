// Link operations direct (docs/ipc.md "Link operations direct"), libtern's side: two channels in
// one process, each to its own FakeAgent, hold the two ends of one link (S sends on end 1, R
// receives on end 2). Both agents' scripts call into one FakeLinkHome, a small model of the
// link's home for the direction S -> R: its mode (home, or direct with an epoch), queued offers
// and posted receives, the kick, held offers and the settle's judgement, and the direct
// connection (a Unix socket pair per direct_open, a duplicate of each end kept so that the test
// can shut it down as the agents' revocation does). libtern's link_direct.cpp is the code under
// test: offers go on the connection once the receiver accepts, a break re-offers the unanswered
// ones tagged and the receiver's settle says which were taken, and cancel keeps its meaning.
//
// The home models only what these tests do: one link, one direction, no receive on any end.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <tern/ipc.hpp>
#include <tern/ipc/job_message.hpp>
#include <tern/ipc/job_wire.hpp>
#include <thread>
#include <vector>

#include "fake_agent.hpp"
#include "port_fixture.hpp"

namespace tern {
namespace {

using Clock = std::chrono::steady_clock;
using ipc::JobOp;
using testing::Eventually;
using testing::FakeAgent;

constexpr std::uint32_t kSendEnd = 1;     // S's end
constexpr std::uint32_t kReceiveEnd = 2;  // its peer, R's
constexpr std::uint64_t kEpochBase = 0x5eed000000000000;
constexpr Timeout kPatience{5000};  // every wait in these tests is bounded by this

enum class Side { kSender, kReceiver };

struct Settle {
  std::uint64_t epoch = 0;
  std::uint32_t matched_through = 0;
  std::vector<std::uint32_t> cancelled;
};

FakeAgent::Answer Ok(std::string body = {}) { return {JobStatus::kOk, std::move(body)}; }
FakeAgent::Answer Err(JobStatus status, std::string text) { return {status, std::move(text)}; }
FakeAgent::Answer Held() {
  FakeAgent::Answer answer;
  answer.hold = true;
  return answer;
}
FakeAgent::Answer HandleAnswer(std::uint32_t handle) {
  ipc::WireWriter writer;
  writer.U32(handle);
  return Ok(writer.Take());
}

// The home of one link for the direction S -> R, shared by S's and R's agents (their scripts
// call Serve). Thread-safety: one mutex; replies go out through the agents' Reply, which never
// waits for the home.
class FakeLinkHome {
 public:
  FakeLinkHome(FakeAgent& sender, FakeAgent& receiver)
      : sender_(sender), receiver_(receiver), timer_([this] { Expire(); }) {}
  ~FakeLinkHome() {
    Stop();
    for (const int fd : dups_) ::close(fd);
    if (queued_ >= 0) ::close(queued_);
  }
  FakeLinkHome(const FakeLinkHome&) = delete;
  FakeLinkHome& operator=(const FakeLinkHome&) = delete;

  void Stop() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    wake_.notify_all();
    if (timer_.joinable()) timer_.join();
  }

  // An agent's script: the answer to a link request (or a held one), nullopt for the agent's
  // model.
  std::optional<FakeAgent::Answer> Serve(Side side, const ipc::JobRequest& request) {
    ipc::WireReader reader(request.body);
    std::lock_guard lock(mu_);
    switch (request.op) {
      case JobOp::kLinkSend: {
        auto end = reader.U32();
        auto message = reader.ReadMessage();
        if (side != Side::kSender || end != kSendEnd || !message) {
          return Err(JobStatus::kBadRequest, "the fake home has S send on end 1 only");
        }
        ++plain_offers_;
        const std::uint32_t handle = NewOp(side, false, std::move(*message));
        Offer(handle);
        return HandleAnswer(handle);
      }
      case JobOp::kLinkSendTagged: {
        auto end = reader.U32();
        auto epoch = reader.U64();
        auto seq = reader.U32();
        auto message = reader.ReadMessage();
        if (side != Side::kSender || end != kSendEnd || !epoch || !seq || !message) {
          return Err(JobStatus::kBadRequest, "the fake home has S send on end 1 only");
        }
        tagged_.emplace_back(*epoch, *seq);
        const std::uint32_t handle = NewOp(side, false, std::move(*message));
        ops_[handle].epoch = *epoch;
        ops_[handle].seq = *seq;
        Offer(handle);
        return HandleAnswer(handle);
      }
      case JobOp::kLinkReceive: {
        auto end = reader.U32();
        if (side != Side::kReceiver || end != kReceiveEnd) {
          return Err(JobStatus::kBadRequest, "the fake home has R receive on end 2 only");
        }
        ++receives_posted_;
        const std::uint32_t handle = NewOp(side, true, {});
        if (direct_) {
          ++kicks_;
          Complete(handle, JobStatus::kOk, Kick());
        } else {
          receives_.push_back(handle);
          Match();
        }
        return HandleAnswer(handle);
      }
      case JobOp::kOpWait: {
        auto handle = reader.U32();
        auto timeout = reader.U32();
        auto it = ops_.find(handle.value_or(0));
        if (!timeout || it == ops_.end() || it->second.side != side) {
          return Err(JobStatus::kInvalidName, "no such operation");
        }
        if (it->second.done) return Finish(*handle, false);
        if (*timeout == 0) return Err(JobStatus::kTimedOut, "the operation is not done");
        it->second.wait_request = request.id;
        it->second.wait_until = *timeout == ipc::kWaitForever
                                    ? Clock::time_point::max()
                                    : Clock::now() + std::chrono::milliseconds(*timeout);
        return Held();
      }
      case JobOp::kOpPoll: {
        auto handle = reader.U32();
        auto it = ops_.find(handle.value_or(0));
        if (it == ops_.end() || it->second.side != side) {
          return Err(JobStatus::kInvalidName, "no such operation");
        }
        if (it->second.done) return Finish(*handle, true);
        ipc::WireWriter writer;
        writer.U8(0);
        return Ok(writer.Take());
      }
      case JobOp::kOpCancel: {
        auto handle = reader.U32();
        auto it = ops_.find(handle.value_or(0));
        if (it == ops_.end() || it->second.side != side) {
          return Err(JobStatus::kInvalidName, "no such operation");
        }
        ++cancels_;
        if (it->second.done) return Err(JobStatus::kAlreadyMatched, "matched already");
        if (std::find(held_.begin(), held_.end(), *handle) != held_.end()) {
          it->second.cancel_request = request.id;  // waits for the settle
          return Held();
        }
        std::erase(offers_, *handle);
        std::erase(receives_, *handle);
        Withdraw(*handle);
        return Ok();
      }
      case JobOp::kLinkDirectBegin: {
        auto end = reader.U32();
        if (side != Side::kSender || end != kSendEnd) {
          return Err(JobStatus::kBadRequest, "the fake home begins end 1 only");
        }
        if (direct_ || !offers_.empty() || !held_.empty()) {
          ++begins_refused_;
          return Err(JobStatus::kUnavailable, "offers of this direction wait at the home");
        }
        direct_ = true;
        epoch_ = kEpochBase + ++begins_;
        for (const std::uint32_t receive : std::exchange(receives_, {})) {
          ++kicks_;
          Complete(receive, JobStatus::kOk, Kick());
        }
        ipc::WireWriter writer;
        writer.U64(epoch_);
        return Ok(writer.Take());
      }
      case JobOp::kLinkSettle: {
        auto end = reader.U32();
        Settle settle;
        auto epoch = reader.U64();
        auto through = reader.U32();
        auto count = reader.U32();
        if (side != Side::kReceiver || end != kReceiveEnd || !epoch || !through || !count) {
          return Err(JobStatus::kBadRequest, "malformed settle");
        }
        settle.epoch = *epoch;
        settle.matched_through = *through;
        for (std::uint32_t i = 0; i < *count; ++i) {
          auto seq = reader.U32();
          if (!seq) return Err(JobStatus::kBadRequest, "malformed settle");
          settle.cancelled.push_back(*seq);
        }
        if (defer_settles_) {
          deferred_.emplace_back(request.id, std::move(settle));
          return Held();
        }
        ApplySettle(settle);
        return Ok();
      }
      case JobOp::kDirectAccept: {
        auto name = reader.U32();
        auto timeout = reader.U32();
        if (side != Side::kReceiver || name != kReceiveEnd || !timeout) return std::nullopt;
        accepting_ = true;
        ++accepts_;
        if (queued_ >= 0) {
          ReplyFd(Side::kReceiver, request.id, std::exchange(queued_, -1));
          return Held();
        }
        if (*timeout == 0) return Err(JobStatus::kTimedOut, "no connection queued");
        if (pending_accept_) {
          Agent(Side::kReceiver)
              .Reply(*pending_accept_, Err(JobStatus::kTimedOut, "another accept came"));
        }
        pending_accept_ = request.id;
        accept_until_ = *timeout == ipc::kWaitForever
                            ? Clock::time_point::max()
                            : Clock::now() + std::chrono::milliseconds(*timeout);
        return Held();
      }
      case JobOp::kDirectOpen: {
        auto name = reader.U32();
        if (side != Side::kSender || name != kSendEnd) return std::nullopt;
        if (!accepting_) return Err(JobStatus::kUnavailable, "the receiver never accepted");
        int ends[2];
        if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ends) != 0) {
          return Err(JobStatus::kUnavailable, "socketpair failed");
        }
        dups_.push_back(::dup(ends[0]));
        dups_.push_back(::dup(ends[1]));
        ++opens_;
        if (pending_accept_) {
          ReplyFd(Side::kReceiver, *std::exchange(pending_accept_, std::nullopt), ends[1]);
        } else {
          if (queued_ >= 0) ::close(queued_);
          queued_ = ends[1];
        }
        ReplyFd(Side::kSender, request.id, ends[0]);
        return Held();
      }
      default:
        return std::nullopt;
    }
  }

  // While on, R's settles wait here unanswered (and the direction stays direct) until
  // ReleaseSettles: a receiver slow to settle.
  void DeferSettles() {
    std::lock_guard lock(mu_);
    defer_settles_ = true;
  }
  void ReleaseSettles() {
    std::lock_guard lock(mu_);
    defer_settles_ = false;
    for (auto& [request, settle] : std::exchange(deferred_, {})) {
      ApplySettle(settle);
      Agent(Side::kReceiver).Reply(request, Ok());
    }
  }
  std::size_t deferred_settles() {
    std::lock_guard lock(mu_);
    return deferred_.size();
  }

  // Shuts every connection made so far down: both jobs read end of file.
  void BreakConnections() {
    std::lock_guard lock(mu_);
    for (const int fd : dups_) ::shutdown(fd, SHUT_RDWR);
  }

  int held_offers() {
    std::lock_guard lock(mu_);
    return static_cast<int>(held_.size());
  }
  std::uint64_t epoch() {
    std::lock_guard lock(mu_);
    return epoch_;
  }
  int begins() {
    std::lock_guard lock(mu_);
    return begins_;
  }
  int begins_refused() {
    std::lock_guard lock(mu_);
    return begins_refused_;
  }
  int kicks() {
    std::lock_guard lock(mu_);
    return kicks_;
  }
  int opens() {
    std::lock_guard lock(mu_);
    return opens_;
  }
  int accepts() {
    std::lock_guard lock(mu_);
    return accepts_;
  }
  int receives_posted() {
    std::lock_guard lock(mu_);
    return receives_posted_;
  }
  int plain_offers() {
    std::lock_guard lock(mu_);
    return plain_offers_;
  }
  int cancels() {
    std::lock_guard lock(mu_);
    return cancels_;
  }
  bool direct() {
    std::lock_guard lock(mu_);
    return direct_;
  }
  std::vector<std::pair<std::uint64_t, std::uint32_t>> tagged() {
    std::lock_guard lock(mu_);
    return tagged_;
  }
  std::vector<Settle> settles() {
    std::lock_guard lock(mu_);
    return settles_;
  }
  // The messages a receive took at the home, in order.
  std::vector<std::string> delivered() {
    std::lock_guard lock(mu_);
    return delivered_;
  }

 private:
  struct Op {
    Side side = Side::kSender;
    bool is_receive = false;
    ipc::Message message;     // an offer's
    std::uint64_t epoch = 0;  // a tagged offer's
    std::uint32_t seq = 0;
    bool done = false;
    JobStatus status = JobStatus::kOk;
    ipc::OpResult result;
    std::optional<std::uint32_t> wait_request;  // a held kOpWait
    Clock::time_point wait_until{};
    std::optional<std::uint32_t> cancel_request;  // a held offer's cancel
  };
  enum class Verdict { kMatched, kCancelled, kOpen };

  FakeAgent& Agent(Side side) { return side == Side::kSender ? sender_ : receiver_; }

  ipc::OpResult Kick() const {
    std::string bytes(8, '\0');
    for (std::size_t k = 0; k < 8; ++k) bytes[k] = static_cast<char>(epoch_ >> (8 * k));
    ipc::OpResult result;
    result.is_receive = true;
    result.end = kReceiveEnd;
    result.message.destination = kReceiveEnd;
    result.message.id = ipc::kLinkDirectNowId;
    result.message.items.push_back(ipc::Item::Bytes(std::move(bytes)));
    return result;
  }
  static ipc::OpResult SendDone() {
    ipc::OpResult result;
    result.end = kSendEnd;
    return result;
  }

  std::uint32_t NewOp(Side side, bool is_receive, ipc::Message message) {
    const std::uint32_t handle = next_handle_++;
    Op& op = ops_[handle];
    op.side = side;
    op.is_receive = is_receive;
    op.message = std::move(message);
    return handle;
  }

  // The answer to a wait or poll of a done op, which is then forgotten.
  FakeAgent::Answer Finish(std::uint32_t handle, bool poll) {
    auto node = ops_.extract(handle);
    const Op& op = node.mapped();
    if (op.status != JobStatus::kOk) {
      return Err(op.status,
                 op.status == JobStatus::kCancelled ? "the operation was cancelled" : "failed");
    }
    ipc::WireWriter writer;
    if (poll) writer.U8(1);
    writer.WriteOpResult(op.result);
    return Ok(writer.Take());
  }

  void Complete(std::uint32_t handle, JobStatus status, ipc::OpResult result) {
    Op& op = ops_.at(handle);
    op.done = true;
    op.status = status;
    op.result = std::move(result);
    if (op.wait_request) {
      const Side side = op.side;
      const std::uint32_t request = *op.wait_request;
      Agent(side).Reply(request, Finish(handle, false));
    }
  }

  // A cancelled op: a wait held for it fails, and it is forgotten.
  void Withdraw(std::uint32_t handle) {
    auto node = ops_.extract(handle);
    if (node.mapped().wait_request) {
      Agent(node.mapped().side)
          .Reply(*node.mapped().wait_request,
                 Err(JobStatus::kCancelled, "the operation was cancelled"));
    }
  }

  Verdict Judge(const Op& op) const {
    if (!last_settle_ || op.epoch == 0 || op.epoch != last_settle_->epoch) return Verdict::kOpen;
    const auto& cancelled = last_settle_->cancelled;
    if (std::find(cancelled.begin(), cancelled.end(), op.seq) != cancelled.end()) {
      return Verdict::kCancelled;
    }
    return op.seq <= last_settle_->matched_through ? Verdict::kMatched : Verdict::kOpen;
  }

  void Offer(std::uint32_t handle) {
    if (direct_) {
      held_.push_back(handle);
      return;
    }
    switch (Judge(ops_.at(handle))) {
      case Verdict::kMatched:
        return Complete(handle, JobStatus::kOk, SendDone());
      case Verdict::kCancelled:
        return Complete(handle, JobStatus::kCancelled, {});
      case Verdict::kOpen:
        break;
    }
    offers_.push_back(handle);
    Match();
  }

  void ApplySettle(const Settle& settle) {
    settles_.push_back(settle);
    if (!direct_ || settle.epoch != epoch_) return;  // stale
    direct_ = false;
    last_settle_ = settle;
    JudgeHeld();
  }

  // The settle hands the direction back: the held offers, judged in order.
  void JudgeHeld() {
    for (const std::uint32_t handle : std::exchange(held_, {})) {
      Op& op = ops_.at(handle);
      const auto cancel = op.cancel_request;
      const Verdict verdict = Judge(op);
      if (verdict == Verdict::kMatched) {
        if (cancel) {
          Agent(Side::kSender).Reply(*cancel, Err(JobStatus::kAlreadyMatched, "matched already"));
        }
        Complete(handle, JobStatus::kOk, SendDone());
      } else if (cancel) {  // cancelled on the connection, or still open: the cancel succeeds
        Agent(Side::kSender).Reply(*cancel, Ok());
        Withdraw(handle);
      } else if (verdict == Verdict::kCancelled) {
        Complete(handle, JobStatus::kCancelled, {});
      } else {
        offers_.push_back(handle);
      }
    }
    Match();
  }

  // Oldest offer to oldest receive.
  void Match() {
    while (!offers_.empty() && !receives_.empty()) {
      const std::uint32_t offer = offers_.front();
      const std::uint32_t receive = receives_.front();
      offers_.pop_front();
      receives_.pop_front();
      ipc::OpResult taken;
      taken.is_receive = true;
      taken.end = kReceiveEnd;
      taken.message = std::move(ops_.at(offer).message);
      taken.message.destination = kReceiveEnd;
      delivered_.emplace_back(FirstBytes(taken.message));
      Complete(offer, JobStatus::kOk, SendDone());
      Complete(receive, JobStatus::kOk, std::move(taken));
    }
  }

  void ReplyFd(Side side, std::uint32_t request, int fd) {
    FakeAgent::Answer answer = Ok();
    answer.fd = fd;
    Agent(side).Reply(request, answer);  // takes a duplicate if it cannot send it now
    ::close(fd);
  }

  // Held waits and accepts end at their deadlines.
  void Expire() {
    std::unique_lock lock(mu_);
    while (!stop_) {
      const auto now = Clock::now();
      for (auto& [handle, op] : ops_) {
        if (op.wait_request && op.wait_until <= now) {
          Agent(op.side).Reply(*op.wait_request,
                               Err(JobStatus::kTimedOut, "the operation is not done"));
          op.wait_request.reset();
        }
      }
      if (pending_accept_ && accept_until_ <= now) {
        Agent(Side::kReceiver)
            .Reply(*std::exchange(pending_accept_, std::nullopt),
                   Err(JobStatus::kTimedOut, "no direct connection"));
      }
      wake_.wait_for(lock, std::chrono::milliseconds(2));
    }
  }

  FakeAgent& sender_;
  FakeAgent& receiver_;
  std::mutex mu_;
  std::condition_variable wake_;
  bool stop_ = false;
  std::map<std::uint32_t, Op> ops_;
  std::uint32_t next_handle_ = 1000;
  std::deque<std::uint32_t> offers_;    // matchable, oldest first
  std::deque<std::uint32_t> receives_;  // posted on end 2
  std::deque<std::uint32_t> held_;      // offers that reached the home while direct
  bool direct_ = false;
  std::uint64_t epoch_ = 0;
  std::optional<Settle> last_settle_;
  bool defer_settles_ = false;
  std::vector<std::pair<std::uint32_t, Settle>> deferred_;  // request, settle
  bool accepting_ = false;                                  // R asked for connections on end 2
  std::optional<std::uint32_t> pending_accept_;
  Clock::time_point accept_until_{};
  int queued_ = -1;        // R's end of a connection S opened, until R accepts
  std::vector<int> dups_;  // of every end made, to shut them down
  int begins_ = 0, begins_refused_ = 0, kicks_ = 0, opens_ = 0, accepts_ = 0, receives_posted_ = 0,
      plain_offers_ = 0, cancels_ = 0;
  std::vector<std::pair<std::uint64_t, std::uint32_t>> tagged_;
  std::vector<Settle> settles_;
  std::vector<std::string> delivered_;
  std::thread timer_;  // last: started once the rest is made
};

struct LinkDirect : ::testing::Test {
  FakeAgent agent_s;
  FakeAgent agent_r;
  std::shared_ptr<FakeLinkHome> home = std::make_shared<FakeLinkHome>(agent_s, agent_r);
  Channel sender = Channel::FromFd(agent_s.TakeJobFd());
  Channel receiver = Channel::FromFd(agent_r.TakeJobFd());

  LinkDirect() {
    // The scripts share the home: one still running when the test ends keeps it alive.
    agent_s.set_script([shared = home](const ipc::JobRequest& request) {
      return shared->Serve(Side::kSender, request);
    });
    agent_r.set_script([shared = home](const ipc::JobRequest& request) {
      return shared->Serve(Side::kReceiver, request);
    });
  }
  ~LinkDirect() override {
    home->ReleaseSettles();  // a keeper waiting for its settle's answer is let go
    agent_s.set_script({});
    agent_r.set_script({});
    home->Stop();
  }

  // R's first receive registers it as accepting and is posted at the home; S's first send opens
  // the connection and begins; the kick moves R's receive onto the connection, where it takes
  // the offer (seq 1 of the epoch).
  void GoDirect(const std::string& payload) {
    auto receive = receiver.link_receive(kReceiveEnd);
    ASSERT_TRUE(receive) << receive.error().ToString();
    EXPECT_EQ(home->accepts(), 1) << "the first receive on the end registers as accepting";
    EXPECT_EQ(home->receives_posted(), 1);
    auto send = sender.link_send(kSendEnd, BytesMessage(0, payload));
    ASSERT_TRUE(send) << send.error().ToString();
    EXPECT_EQ(home->opens(), 1);
    EXPECT_EQ(home->begins(), 1);
    EXPECT_EQ(home->kicks(), 1) << "the begin kicks the receive posted at the home";
    auto got = receiver.wait(*receive, kPatience);
    ASSERT_TRUE(got) << got.error().ToString();
    EXPECT_TRUE(got->is_receive);
    EXPECT_EQ(got->end, kReceiveEnd);
    EXPECT_EQ(FirstBytes(got->message), payload);
    auto sent = sender.wait(*send, kPatience);
    ASSERT_TRUE(sent) << sent.error().ToString();
    EXPECT_FALSE(sent->is_receive);
    EXPECT_EQ(home->plain_offers(), 0) << "the offer went on the connection";
    EXPECT_TRUE(home->delivered().empty());
  }

  // `call` (which may wait without a deadline of its own), given kPatience; past it the
  // connections are broken, which ends any wait on them.
  template <typename Call>
  auto Within(Call call) {
    auto future = std::async(std::launch::async, std::move(call));
    if (future.wait_for(kPatience) != std::future_status::ready) {
      ADD_FAILURE() << "not done within " << kPatience.count() << " ms";
      home->BreakConnections();
    }
    return future.get();
  }
};

// Once R has received on its end (and so accepts), S's sends go on the connection: 200
// exchanges, each message received once and in order, matched by R's libtern; the home saw one
// begin and one kick, and no offer.
TEST_F(LinkDirect, OffersGoOnTheConnectionOnceTheReceiverAccepts) {
  constexpr int kCount = 200;
  const std::uint64_t matches_before = direct_link_matches();
  ASSERT_NO_FATAL_FAILURE(GoDirect("first"));
  std::vector<std::string> received;
  std::string receive_failure;
  std::thread receiving([&] {
    for (int i = 0; i < kCount; ++i) {
      auto receive = receiver.link_receive(kReceiveEnd);
      if (!receive) {
        receive_failure = "receive " + std::to_string(i) + ": " + receive.error().ToString();
        return;
      }
      auto got = receiver.wait(*receive, kPatience);
      if (!got) {
        receive_failure = "wait " + std::to_string(i) + ": " + got.error().ToString();
        return;
      }
      received.emplace_back(FirstBytes(got->message));
    }
  });
  for (int i = 0; i < kCount; ++i) {
    auto send = sender.link_send(kSendEnd, BytesMessage(0, "m" + std::to_string(i)));
    if (!send) {
      ADD_FAILURE() << "send " << i << ": " << send.error().ToString();
      break;
    }
    auto sent = sender.wait(*send, kPatience);
    if (!sent) {
      ADD_FAILURE() << "send " << i << " not taken: " << sent.error().ToString();
      break;
    }
    EXPECT_FALSE(sent->is_receive);
    EXPECT_EQ(sent->end, kSendEnd);
  }
  receiving.join();
  EXPECT_EQ(receive_failure, "");
  ASSERT_EQ(received.size(), static_cast<std::size_t>(kCount));
  for (int i = 0; i < kCount; ++i) {
    EXPECT_EQ(received[i], "m" + std::to_string(i)) << "in order, each once";
  }
  EXPECT_GE(direct_link_matches() - matches_before, static_cast<std::uint64_t>(kCount * 9 / 10))
      << "most offers were matched on the connection";
  EXPECT_EQ(home->begins(), 1);
  EXPECT_EQ(home->kicks(), 1);
  EXPECT_EQ(home->opens(), 1);
  EXPECT_EQ(home->plain_offers(), 0) << "no offer went through the agents";
  EXPECT_TRUE(home->tagged().empty());
  EXPECT_TRUE(home->settles().empty());
  EXPECT_TRUE(home->direct());
}

// With the direction direct, S offers six, R takes three, then the connection breaks: R settles
// (matched through the last it took), S offers the unanswered ones again tagged, the home
// judges them by the settle: those R took complete without being delivered again, the rest go
// to R's next receives through the home. Every send completes once, every message is received
// once.
TEST_F(LinkDirect, ABreakResendsUnansweredOffersTaggedAndTheSettleSaysWhichWereTaken) {
  constexpr std::uint32_t kOffers = 6;
  constexpr std::uint32_t kTaken = 3;
  ASSERT_NO_FATAL_FAILURE(GoDirect("first"));  // seq 1
  const std::uint64_t epoch = home->epoch();
  std::vector<OpHandle> sends;
  for (std::uint32_t i = 1; i <= kOffers; ++i) {  // seqs 2 .. kOffers + 1
    auto send = sender.link_send(kSendEnd, BytesMessage(0, "b" + std::to_string(i)));
    ASSERT_TRUE(send) << send.error().ToString();
    sends.push_back(*send);
  }
  for (std::uint32_t i = 1; i <= kTaken; ++i) {
    auto receive = receiver.link_receive(kReceiveEnd);
    ASSERT_TRUE(receive) << receive.error().ToString();
    auto got = receiver.wait(*receive, kPatience);
    ASSERT_TRUE(got) << got.error().ToString();
    EXPECT_EQ(FirstBytes(got->message), "b" + std::to_string(i));
  }
  EXPECT_EQ(home->plain_offers(), 0);
  const std::uint32_t last_taken = 1 + kTaken;  // the seq of "b3"

  home->BreakConnections();  // a revocation; the keepers see it (neither job calls meanwhile)
  ASSERT_TRUE(Eventually([&] { return !home->settles().empty(); })) << "R never settled";
  const auto settles = home->settles();
  ASSERT_EQ(settles.size(), 1u);
  EXPECT_EQ(settles[0].epoch, epoch);
  EXPECT_EQ(settles[0].matched_through, last_taken);
  EXPECT_TRUE(settles[0].cancelled.empty());
  // S offers again, tagged, at least every offer R did not take (and perhaps those whose
  // Matched it had not read), each once.
  ASSERT_TRUE(Eventually([&] {
    std::set<std::uint32_t> seqs;
    for (const auto& tagged : home->tagged()) seqs.insert(tagged.second);
    return seqs.contains(last_taken + 1) && seqs.contains(last_taken + 2) &&
           seqs.contains(last_taken + 3);
  })) << "S did not offer the unanswered ones again";
  std::set<std::uint32_t> seen;
  for (const auto& [tag_epoch, seq] : home->tagged()) {
    EXPECT_EQ(tag_epoch, epoch);
    EXPECT_GE(seq, 2u);
    EXPECT_LE(seq, kOffers + 1);
    EXPECT_TRUE(seen.insert(seq).second) << "seq " << seq << " offered again twice";
  }
  EXPECT_EQ(home->plain_offers(), 0) << "every written offer goes again tagged";

  // The untaken ones reach R through the home, in order, once.
  for (std::uint32_t i = kTaken + 1; i <= kOffers; ++i) {
    auto receive = receiver.link_receive(kReceiveEnd);
    ASSERT_TRUE(receive) << receive.error().ToString();
    auto got = receiver.wait(*receive, kPatience);
    ASSERT_TRUE(got) << i << ": " << got.error().ToString();
    EXPECT_EQ(FirstBytes(got->message), "b" + std::to_string(i));
  }
  auto extra = receiver.link_receive(kReceiveEnd);
  ASSERT_TRUE(extra) << extra.error().ToString();
  EXPECT_EQ(receiver.wait(*extra, Timeout(200)).status(), JobStatus::kTimedOut)
      << "nothing is delivered twice";
  EXPECT_TRUE(receiver.cancel(*extra));
  EXPECT_EQ(home->delivered(), (std::vector<std::string>{"b4", "b5", "b6"}))
      << "the home delivered only what R had not taken";

  // Every send completes ok, once.
  for (std::uint32_t i = 0; i < kOffers; ++i) {
    auto sent = sender.wait(sends[i], kPatience);
    ASSERT_TRUE(sent) << "b" << i + 1 << ": " << sent.error().ToString();
    EXPECT_FALSE(sent->is_receive);
    EXPECT_FALSE(sender.poll(sends[i])) << "a handle's outcome is given once";
  }
  EXPECT_FALSE(home->direct());
}

// On the connection: an offer no receive took is cancelled (R answers Cancelled) and R never
// gets it; an offer R took cannot be cancelled (kAlreadyMatched) and its wait then says it was
// taken. The home decides none of it.
TEST_F(LinkDirect, CancelBeforeAMatchSucceedsAndAfterItSaysAlreadyMatched) {
  ASSERT_NO_FATAL_FAILURE(GoDirect("first"));
  auto early = sender.link_send(kSendEnd, BytesMessage(0, "c1"));
  ASSERT_TRUE(early) << early.error().ToString();
  const auto cancelled = Within([&] { return sender.cancel(*early); });
  EXPECT_TRUE(cancelled) << cancelled.error().ToString();

  auto idle = receiver.link_receive(kReceiveEnd);
  ASSERT_TRUE(idle) << idle.error().ToString();
  EXPECT_EQ(receiver.wait(*idle, Timeout(200)).status(), JobStatus::kTimedOut)
      << "the cancelled offer is never received";
  const auto withdrawn = Within([&] { return receiver.cancel(*idle); });
  EXPECT_TRUE(withdrawn) << withdrawn.error().ToString();

  auto late = sender.link_send(kSendEnd, BytesMessage(0, "c2"));
  ASSERT_TRUE(late) << late.error().ToString();
  auto receive = receiver.link_receive(kReceiveEnd);
  ASSERT_TRUE(receive) << receive.error().ToString();
  auto got = receiver.wait(*receive, kPatience);
  ASSERT_TRUE(got) << got.error().ToString();
  EXPECT_EQ(FirstBytes(got->message), "c2") << "the next offer, not the cancelled one";
  const auto refused = Within([&] { return sender.cancel(*late); });
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.status(), JobStatus::kAlreadyMatched) << refused.error().ToString();
  auto sent = sender.wait(*late, kPatience);
  ASSERT_TRUE(sent) << sent.error().ToString();
  EXPECT_FALSE(sent->is_receive);

  EXPECT_EQ(home->cancels(), 0) << "the connection decided both";
  EXPECT_EQ(home->plain_offers(), 0);
  EXPECT_TRUE(home->settles().empty());
  EXPECT_TRUE(home->delivered().empty());
}

// Offers sent before R accepts go through the agents and wait at the home; S's begin is refused
// while they wait there, and S keeps its later offers in its process meanwhile. R receives every
// message once and in order: those at the home first, then the kept ones on the connection.
TEST_F(LinkDirect, OffersWaitingAtTheHomeAreTakenBeforeAnyOnTheConnection) {
  using namespace std::chrono_literals;
  constexpr int kKept = 20;
  const std::uint64_t matches_before = direct_link_matches();
  std::vector<OpHandle> sends;
  int next = 0;
  const auto send_next = [&] {
    auto send = sender.link_send(kSendEnd, BytesMessage(0, "o" + std::to_string(next++)));
    ASSERT_TRUE(send) << send.error().ToString();
    sends.push_back(*send);
  };
  for (int i = 0; i < 5; ++i) ASSERT_NO_FATAL_FAILURE(send_next());
  EXPECT_EQ(home->plain_offers(), 5) << "R accepts nothing yet: through the agents";
  // R's first receive registers it as accepting, and takes o0 at the home.
  auto first = receiver.link_receive(kReceiveEnd);
  ASSERT_TRUE(first) << first.error().ToString();
  auto got = receiver.wait(*first, kPatience);
  ASSERT_TRUE(got) << got.error().ToString();
  EXPECT_EQ(FirstBytes(got->message), "o0");
  // S asks for its connection again once its backoff after the refused open passed.
  const auto deadline = Clock::now() + kPatience;
  while (home->opens() == 0 && Clock::now() < deadline) {
    std::this_thread::sleep_for(2ms);
    ASSERT_NO_FATAL_FAILURE(send_next());
  }
  ASSERT_EQ(home->opens(), 1);
  EXPECT_EQ(home->begins(), 0);
  EXPECT_GE(home->begins_refused(), 1) << "offers wait at the home";
  const int plain = home->plain_offers();
  EXPECT_EQ(plain, next - 1) << "the send that opened the connection is kept in S's process";
  for (int i = 0; i < kKept; ++i) ASSERT_NO_FATAL_FAILURE(send_next());
  EXPECT_EQ(home->plain_offers(), plain) << "S keeps its offers while the begin is refused";

  for (int i = 1; i < next; ++i) {
    auto receive = receiver.link_receive(kReceiveEnd);
    ASSERT_TRUE(receive) << receive.error().ToString();
    auto taken = receiver.wait(*receive, kPatience);
    ASSERT_TRUE(taken) << "o" << i << ": " << taken.error().ToString();
    ASSERT_EQ(FirstBytes(taken->message), "o" + std::to_string(i)) << "in order, each once";
  }
  auto extra = receiver.link_receive(kReceiveEnd);
  ASSERT_TRUE(extra) << extra.error().ToString();
  EXPECT_EQ(receiver.wait(*extra, Timeout(200)).status(), JobStatus::kTimedOut) << "nothing more";
  EXPECT_TRUE(receiver.cancel(*extra));
  for (std::size_t i = 0; i < sends.size(); ++i) {
    auto sent = sender.wait(sends[i], kPatience);
    EXPECT_TRUE(sent) << "o" << i << ": " << sent.error().ToString();
  }
  EXPECT_EQ(home->begins(), 1) << "granted once the home had no offer left";
  EXPECT_EQ(direct_link_matches() - matches_before, static_cast<std::uint64_t>(kKept + 1))
      << "the kept offers were matched on the connection";
  EXPECT_EQ(home->plain_offers(), plain);
  EXPECT_TRUE(home->tagged().empty());
}

// More offers than S's window (256) with no receive waiting: the rest wait in S's process and
// go out as R's answers come; R receives all of them once, in order, on the connection.
TEST_F(LinkDirect, OffersPastTheSendersWindowGoOutAsAnswersCome) {
  constexpr int kCount = 300;
  ASSERT_NO_FATAL_FAILURE(GoDirect("first"));
  const std::uint64_t matches_before = direct_link_matches();
  std::vector<OpHandle> sends;
  for (int i = 0; i < kCount; ++i) {
    auto send = sender.link_send(kSendEnd, BytesMessage(0, "w" + std::to_string(i)));
    ASSERT_TRUE(send) << send.error().ToString();
    sends.push_back(*send);
  }
  for (int i = 0; i < kCount; ++i) {
    auto receive = receiver.link_receive(kReceiveEnd);
    ASSERT_TRUE(receive) << receive.error().ToString();
    auto got = receiver.wait(*receive, kPatience);
    ASSERT_TRUE(got) << i << ": " << got.error().ToString();
    ASSERT_EQ(FirstBytes(got->message), "w" + std::to_string(i)) << "in order, each once";
  }
  for (int i = 0; i < kCount; ++i) {
    auto sent = sender.wait(sends[i], kPatience);
    ASSERT_TRUE(sent) << "w" << i << ": " << sent.error().ToString();
  }
  EXPECT_EQ(direct_link_matches() - matches_before, static_cast<std::uint64_t>(kCount));
  EXPECT_EQ(home->plain_offers(), 0);
  EXPECT_TRUE(home->tagged().empty());
}

// After a break, an offer R never took is held at the home (re-offered tagged) until R settles;
// S's cancel of it waits for that settle and then succeeds, and R never receives it.
TEST_F(LinkDirect, ACancelOfAHeldOfferWaitsForTheSettle) {
  using namespace std::chrono_literals;
  ASSERT_NO_FATAL_FAILURE(GoDirect("first"));  // seq 1
  const std::uint64_t epoch = home->epoch();
  auto send = sender.link_send(kSendEnd, BytesMessage(0, "h1"));  // seq 2, no receive waits
  ASSERT_TRUE(send) << send.error().ToString();
  home->DeferSettles();
  home->BreakConnections();
  auto cancel = std::async(std::launch::async, [&] { return sender.cancel(*send); });
  // No ASSERT until the settles are released: the future's end waits for the cancel.
  EXPECT_TRUE(Eventually([&] { return home->cancels() == 1; })) << "no cancel reached the home";
  EXPECT_TRUE(Eventually([&] { return home->deferred_settles() == 1; })) << "R never settled";
  EXPECT_EQ(home->held_offers(), 1);
  EXPECT_EQ(home->tagged(), (std::vector<std::pair<std::uint64_t, std::uint32_t>>{{epoch, 2}}));
  EXPECT_EQ(cancel.wait_for(50ms), std::future_status::timeout)
      << "the cancel waits for the settle";
  home->ReleaseSettles();
  ASSERT_EQ(cancel.wait_for(kPatience), std::future_status::ready);
  const auto cancelled = cancel.get();
  EXPECT_TRUE(cancelled) << cancelled.error().ToString();
  const auto settles = home->settles();
  ASSERT_EQ(settles.size(), 1u);
  EXPECT_EQ(settles[0].matched_through, 1u);
  EXPECT_TRUE(settles[0].cancelled.empty());

  auto receive = receiver.link_receive(kReceiveEnd);
  ASSERT_TRUE(receive) << receive.error().ToString();
  EXPECT_EQ(receiver.wait(*receive, Timeout(200)).status(), JobStatus::kTimedOut)
      << "the cancelled offer is never received";
  EXPECT_TRUE(receiver.cancel(*receive));
  EXPECT_TRUE(home->delivered().empty());
}

}  // namespace
}  // namespace tern
