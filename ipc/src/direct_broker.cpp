#include "tern/ipc/direct_broker.hpp"

#include <openssl/rand.h>

#include <algorithm>
#include <stdexcept>

namespace tern::ipc {
namespace {

DirectToken RandomToken() {
  DirectToken token{};
  // A predictable token would let anyone who reaches the listener take a job's connection.
  if (RAND_bytes(token.data(), static_cast<int>(token.size())) != 1) {
    throw std::runtime_error("RAND_bytes failed: no token for a direct connection");
  }
  return token;
}

}  // namespace

DirectBroker::DirectBroker(TokenSource tokens)
    : tokens_(tokens ? std::move(tokens) : TokenSource(RandomToken)) {}

void DirectBroker::Accept(const std::string& job, std::uint32_t request, std::uint32_t name,
                          ObjectId port, std::uint32_t timeout_ms, Clock::time_point now) {
  auto it = ports_.find(port);
  if (it != ports_.end() && (it->second.job != job || it->second.name != name)) {
    // The receive right changed hands without us hearing of it: the old acceptor's state
    // belongs to a right it no longer holds.
    StopAccepting(it);
    it = ports_.end();
  }
  if (it == ports_.end()) it = ports_.emplace(port, AcceptingPort{job, name, {}, {}}).first;
  AcceptingPort& accepting = it->second;
  if (!accepting.queued.empty()) {
    const Connection connection = accepting.queued.front();
    accepting.queued.pop_front();
    Hand(job, request, name, port, connection);
    return;
  }
  if (timeout_ms == 0) {
    actions_.replies.push_back({job, request, JobStatus::kTimedOut, "no direct call came", 0});
    return;
  }
  WaitingAccept waiting{job, request, std::nullopt};
  if (timeout_ms != kWaitForever) waiting.deadline = now + std::chrono::milliseconds(timeout_ms);
  accepting.waiting.push_back(std::move(waiting));
}

std::optional<std::pair<std::string, std::uint32_t>> DirectBroker::Acceptor(ObjectId port) const {
  auto it = ports_.find(port);
  if (it == ports_.end()) return std::nullopt;
  return std::make_pair(it->second.job, it->second.name);
}

std::size_t DirectBroker::TokensOut(ObjectId port) const {
  return static_cast<std::size_t>(
      std::count_if(tokens_out_.begin(), tokens_out_.end(),
                    [&](const auto& entry) { return entry.second.port == port; }));
}

Expected<DirectToken> DirectBroker::Grant(ObjectId port, Clock::time_point now) {
  auto it = ports_.find(port);
  if (it == ports_.end()) return Fail("the port's receiver never asked for direct calls");
  if (suspended_.contains(it->second.job)) return Fail("the port's receiver is moving");
  if (it->second.queued.size() + TokensOut(port) >= kMaxQueued) {
    return Fail("the port's direct call queue is full");
  }
  DirectToken token = tokens_();
  tokens_out_[token] = Token{port, now + kTokenLife};
  return token;
}

void DirectBroker::Arrived(std::uint64_t connection, std::uint64_t inode, const DirectToken& token,
                           Clock::time_point now) {
  auto used = tokens_out_.find(token);
  if (used == tokens_out_.end() || used->second.expiry <= now) {
    if (used != tokens_out_.end()) tokens_out_.erase(used);
    actions_.closes.push_back(connection);
    return;
  }
  const ObjectId port = used->second.port;
  tokens_out_.erase(used);
  auto it = ports_.find(port);
  if (it == ports_.end() || suspended_.contains(it->second.job) ||
      (it->second.waiting.empty() && it->second.queued.size() >= kMaxQueued)) {
    actions_.closes.push_back(connection);
    return;
  }
  AcceptingPort& accepting = it->second;
  if (accepting.waiting.empty()) {
    accepting.queued.push_back({connection, inode});
    return;
  }
  const WaitingAccept waiting = std::move(accepting.waiting.front());
  accepting.waiting.pop_front();
  Hand(waiting.job, waiting.request, accepting.name, port, {connection, inode});
}

void DirectBroker::Hand(const std::string& job, std::uint32_t request, std::uint32_t name,
                        ObjectId port, const Connection& connection) {
  actions_.replies.push_back({job, request, JobStatus::kOk, "", connection.id});
  records_[job].push_back({connection.inode, Role::kServer, name, port});
}

std::uint64_t DirectBroker::StartAsk(const std::string& job, std::uint32_t request,
                                     std::uint32_t name, ObjectId port, Clock::time_point now) {
  const std::uint64_t id = next_ask_++;
  asks_[id] = Ask{job, request, name, port, now + kAskDeadline};
  return id;
}

bool DirectBroker::AskPending(std::uint64_t ask) const { return asks_.contains(ask); }

void DirectBroker::AskRefused(std::uint64_t ask, const std::string& why, bool dead) {
  auto it = asks_.find(ask);
  if (it == asks_.end()) return;
  actions_.replies.push_back({it->second.job, it->second.request,
                              dead ? JobStatus::kDeadName : JobStatus::kUnavailable, why, 0});
  asks_.erase(it);
}

void DirectBroker::AskConnected(std::uint64_t ask, std::uint64_t connection, std::uint64_t inode) {
  auto it = asks_.find(ask);
  if (it == asks_.end()) {
    actions_.closes.push_back(connection);
    return;
  }
  Ask done = std::move(it->second);
  asks_.erase(it);
  if (suspended_.contains(done.job)) {
    actions_.closes.push_back(connection);
    actions_.replies.push_back(
        {done.job, done.request, JobStatus::kUnavailable, "the job is moving", 0});
    return;
  }
  actions_.replies.push_back({done.job, done.request, JobStatus::kOk, "", connection});
  records_[done.job].push_back({inode, Role::kClient, done.name, done.port});
}

void DirectBroker::CheckRights(const std::string& job, const RightHeld& held) {
  if (auto it = records_.find(job); it != records_.end()) {
    std::erase_if(it->second, [&](const Record& record) {
      if (held(record.role, record.name, record.port)) return false;
      actions_.revokes.push_back({job, record.inode});
      return true;
    });
    if (it->second.empty()) records_.erase(it);
  }
  for (auto it = ports_.begin(); it != ports_.end();) {
    auto next = std::next(it);
    if (it->second.job == job && !held(Role::kServer, it->second.name, it->first)) {
      StopAccepting(it);
    }
    it = next;
  }
}

void DirectBroker::StopAccepting(std::map<ObjectId, AcceptingPort>::iterator port) {
  for (const auto& connection : port->second.queued) actions_.closes.push_back(connection.id);
  for (const auto& waiting : port->second.waiting) {
    actions_.replies.push_back({waiting.job, waiting.request, JobStatus::kInvalidName,
                                "the receive right left the job", 0});
  }
  std::erase_if(tokens_out_, [&](const auto& entry) { return entry.second.port == port->first; });
  ports_.erase(port);
}

void DirectBroker::AnswerWaiting(const std::string& job, JobStatus status, const std::string& why) {
  for (auto& [id, port] : ports_) {
    if (port.job != job) continue;
    for (const auto& waiting : port.waiting) {
      actions_.replies.push_back({waiting.job, waiting.request, status, why, 0});
    }
    port.waiting.clear();
  }
}

void DirectBroker::Suspend(const std::string& job) {
  suspended_.insert(job);
  if (auto it = records_.find(job); it != records_.end()) {
    for (const auto& record : it->second) actions_.revokes.push_back({job, record.inode});
    records_.erase(it);
  }
  for (auto& [id, port] : ports_) {
    if (port.job != job) continue;
    for (const auto& connection : port.queued) actions_.closes.push_back(connection.id);
    port.queued.clear();
  }
  std::erase_if(tokens_out_, [&](const auto& entry) {
    auto port = ports_.find(entry.second.port);
    return port != ports_.end() && port->second.job == job;
  });
  AnswerWaiting(job, JobStatus::kTimedOut, "the job is moving");
}

void DirectBroker::Resume(const std::string& job) { suspended_.erase(job); }

bool DirectBroker::Suspended(const std::string& job) const { return suspended_.contains(job); }

void DirectBroker::Leaving(const std::string& job) {
  AnswerWaiting(job, JobStatus::kTimedOut, "the job is moving");
}

void DirectBroker::JobGone(const std::string& job) {
  records_.erase(job);
  suspended_.erase(job);
  for (auto it = ports_.begin(); it != ports_.end();) {
    auto next = std::next(it);
    if (it->second.job == job) {
      it->second.waiting.clear();  // no channel to answer on
      StopAccepting(it);
    }
    it = next;
  }
  std::erase_if(asks_, [&](const auto& entry) { return entry.second.job == job; });
}

std::vector<DirectBroker::Record> DirectBroker::Records(const std::string& job) const {
  auto it = records_.find(job);
  return it == records_.end() ? std::vector<Record>{} : it->second;
}

std::size_t DirectBroker::Queued(ObjectId port) const {
  auto it = ports_.find(port);
  return it == ports_.end() ? 0 : it->second.queued.size();
}

void DirectBroker::Tick(Clock::time_point now) {
  for (auto& [id, port] : ports_) {
    std::erase_if(port.waiting, [&](const WaitingAccept& waiting) {
      if (!waiting.deadline || *waiting.deadline > now) return false;
      actions_.replies.push_back(
          {waiting.job, waiting.request, JobStatus::kTimedOut, "no direct call came", 0});
      return true;
    });
  }
  std::erase_if(tokens_out_, [&](const auto& entry) { return entry.second.expiry <= now; });
  for (auto it = asks_.begin(); it != asks_.end();) {
    auto next = std::next(it);
    if (it->second.deadline <= now) {
      actions_.replies.push_back({it->second.job, it->second.request, JobStatus::kUnavailable,
                                  "no direct connection within 2 s", 0});
      asks_.erase(it);
    }
    it = next;
  }
}

std::optional<DirectBroker::Clock::time_point> DirectBroker::NextDeadline() const {
  std::optional<Clock::time_point> next;
  const auto consider = [&](Clock::time_point at) {
    if (!next || at < *next) next = at;
  };
  for (const auto& [id, port] : ports_) {
    for (const auto& waiting : port.waiting) {
      if (waiting.deadline) consider(*waiting.deadline);
    }
  }
  for (const auto& [token, out] : tokens_out_) consider(out.expiry);
  for (const auto& [id, ask] : asks_) consider(ask.deadline);
  return next;
}

DirectBroker::Actions DirectBroker::TakeActions() { return std::exchange(actions_, {}); }

}  // namespace tern::ipc
