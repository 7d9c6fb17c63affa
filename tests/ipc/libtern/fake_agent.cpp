#include "fake_agent.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <tern/ipc/frame.hpp>
#include <utility>

namespace tern::testing {

using ipc::JobOp;
using ipc::JobStatus;
using ipc::WireReader;
using ipc::WireWriter;

namespace {

FakeAgent::Answer Ok(std::string body = {}) { return {JobStatus::kOk, std::move(body)}; }
FakeAgent::Answer Err(JobStatus status, std::string text) { return {status, std::move(text)}; }
std::string U32Body(std::uint32_t v) {
  WireWriter writer;
  writer.U32(v);
  return writer.Take();
}

}  // namespace

FakeAgent::FakeAgent() {
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) {
    throw std::runtime_error("socketpair failed");
  }
  agent_fd_ = fds[0];
  job_fd_ = fds[1];
  thread_ = std::thread([this] { Serve(); });
}

FakeAgent::~FakeAgent() {
  stop_ = true;
  thread_.join();
  if (agent_fd_ >= 0) ::close(agent_fd_);
  if (job_fd_ >= 0) ::close(job_fd_);
  for (auto& [id, fd] : regions_) ::close(fd);
  for (auto& [id, port] : direct_) {
    for (int fd : port.queued) ::close(fd);
  }
  for (int fd : direct_ends_) ::close(fd);
  for (Outgoing& outgoing : out_) {
    if (outgoing.owns_fd) ::close(outgoing.fd);
  }
}

std::vector<JobOp> FakeAgent::ops_in_order() {
  std::lock_guard lock(mu_);
  return ops_order_;
}

int FakeAgent::requests_with_op(JobOp op) {
  std::lock_guard lock(mu_);
  return ops_seen_[op];
}

void FakeAgent::BreakDirectConnections() {
  std::lock_guard lock(mu_);
  for (int fd : direct_ends_) ::shutdown(fd, SHUT_RDWR);
}

std::size_t FakeAgent::direct_ends_made() {
  std::lock_guard lock(mu_);
  return direct_ends_.size();
}

int FakeAgent::TakeJobFd() { return std::exchange(job_fd_, -1); }

void FakeAgent::set_script(Script script) {
  std::lock_guard lock(mu_);
  script_ = std::move(script);
}

void FakeAgent::set_drop(Drop drop) {
  std::lock_guard lock(mu_);
  drop_ = std::move(drop);
}

void FakeAgent::Close() {
  std::lock_guard lock(write_mu_);
  ::shutdown(agent_fd_, SHUT_RDWR);
}

int FakeAgent::sent_with_id(std::uint32_t id) {
  std::lock_guard lock(mu_);
  return sent_ids_[id];
}

void FakeAgent::Reply(std::uint32_t request_id, const Answer& answer) { Send(request_id, answer); }

void FakeAgent::Send(std::uint32_t request_id, const Answer& answer) {
  Outgoing outgoing;
  outgoing.frame = ipc::EncodeFrame(ipc::FrameType::kIpcReply,
                                    ipc::EncodeJobReply(request_id, answer.status, answer.body));
  outgoing.fd = answer.fd;  // borrowed while this call lasts
  std::lock_guard lock(write_mu_);
  out_.push_back(std::move(outgoing));
  Flush();
  // Still queued with its fd unsent: the caller may close its fd once this returns, so the queue
  // takes a duplicate. Only then: a test that counts its fds sees none left open by a reply that
  // went at once.
  if (!out_.empty() && out_.back().fd >= 0 && !out_.back().owns_fd) {
    Outgoing& last = out_.back();
    last.fd = ::fcntl(last.fd, F_DUPFD_CLOEXEC, 0);
    if (last.fd < 0) throw std::runtime_error("FakeAgent: dup of an answer's fd failed");
    last.owns_fd = true;
  }
}

void FakeAgent::Flush() {
  while (!out_.empty()) {
    Outgoing& next = out_.front();
    iovec iov{next.frame.data() + next.offset, next.frame.size() - next.offset};
    msghdr header{};
    header.msg_iov = &iov;
    header.msg_iovlen = 1;
    alignas(cmsghdr) std::array<char, CMSG_SPACE(sizeof(int))> control{};
    if (next.offset == 0 && next.fd >= 0) {
      header.msg_control = control.data();
      header.msg_controllen = control.size();
      cmsghdr* c = CMSG_FIRSTHDR(&header);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int));
      std::memcpy(CMSG_DATA(c), &next.fd, sizeof(int));
    }
    const ssize_t n = ::sendmsg(agent_fd_, &header, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;  // Serve waits for room
    if (n <= 0) {  // closed: the job is gone, and so is everything for it
      for (Outgoing& dropped : out_) {
        if (dropped.owns_fd) ::close(dropped.fd);
      }
      out_.clear();
      return;
    }
    if (next.owns_fd) ::close(next.fd);  // the job has it now
    next.fd = -1;
    next.owns_fd = false;
    next.offset += static_cast<std::size_t>(n);
    if (next.offset == next.frame.size()) out_.pop_front();
  }
}

void FakeAgent::Serve() {
  ipc::FrameDecoder decoder(ipc::kMaxMessageBytes);
  std::array<char, 65536> buffer;
  while (!stop_) {
    pollfd p{agent_fd_, POLLIN, 0};
    {
      std::lock_guard lock(write_mu_);
      if (!out_.empty()) p.events |= POLLOUT;
    }
    const int ready = ::poll(&p, 1, 5);
    if (ready > 0 && (p.revents & POLLOUT)) {
      std::lock_guard lock(write_mu_);
      Flush();
    }
    if (ready > 0 && (p.revents & (POLLIN | POLLHUP | POLLERR))) {
      const ssize_t n = ::read(agent_fd_, buffer.data(), buffer.size());
      if (n <= 0) return;
      if (!decoder.Feed(std::string_view(buffer.data(), static_cast<std::size_t>(n)))) return;
      while (auto frame = decoder.Next()) {
        if (frame->type != ipc::FrameType::kIpcRequest) continue;
        auto request =
            ipc::DecodeJobRequest(std::make_shared<const std::string>(std::move(frame->payload)));
        if (request) Handle(*request);
      }
    }
    std::lock_guard lock(mu_);
    Expire();
  }
}

void FakeAgent::Handle(const ipc::JobRequest& request) {
  Script script;
  {
    std::lock_guard lock(mu_);
    script = script_;
    ++ops_seen_[request.op];
    ops_order_.push_back(request.op);
  }
  if (script) {
    if (auto answer = script(request)) {
      if (!answer->hold) Send(request.id, *answer);
      return;
    }
  }
  std::optional<Answer> answer;
  {
    std::lock_guard lock(mu_);
    answer = Model(request);
  }
  if (answer) Send(request.id, *answer);
  if (answer && answer->owns_fd) ::close(answer->fd);
}

std::uint32_t FakeAgent::NewName(Right right) {
  const std::uint32_t name = next_name_++;
  names_[name] = right;
  return name;
}

std::optional<FakeAgent::Answer> FakeAgent::Model(const ipc::JobRequest& request) {
  WireReader reader(request.body);
  auto port_of = [&](std::uint32_t name, bool receive) -> std::optional<std::uint64_t> {
    auto it = names_.find(name);
    if (it == names_.end()) return std::nullopt;
    if (receive && it->second.kind != Right::kReceive) return std::nullopt;
    if (it->second.kind == Right::kRegion) return std::nullopt;
    return it->second.object;
  };
  switch (request.op) {
    case JobOp::kPortAllocate: {
      auto limit = reader.U32();
      // As the agent's router answers a limit over [ipc] max_queue_limit (default 65536).
      if (limit && *limit > 65536) {
        return Err(JobStatus::kOverQuota,
                   "port_allocate: a queue limit of " + std::to_string(*limit) +
                       " messages is over this node's cap of 65536 ([ipc] max_queue_limit)");
      }
      const std::uint64_t id = next_object_++;
      ports_[id].limit = limit && *limit ? *limit : ipc::kDefaultQueueLimit;
      return Ok(U32Body(NewName({Right::kReceive, id})));
    }
    case JobOp::kMakeSend: {
      auto port = port_of(reader.U32().value_or(0), true);
      if (!port) return Err(JobStatus::kInvalidName, "not a receive right");
      for (auto& [name, right] : names_) {
        if (right.kind == Right::kSend && right.object == *port) return Ok(U32Body(name));
      }
      return Ok(U32Body(NewName({Right::kSend, *port})));
    }
    case JobOp::kDeallocate: {
      if (names_.erase(reader.U32().value_or(0)) == 0) {
        return Err(JobStatus::kInvalidName, "no such name");
      }
      return Ok();
    }
    case JobOp::kPortStatus: {
      auto port = port_of(reader.U32().value_or(0), true);
      if (!port) return Err(JobStatus::kInvalidName, "not a receive right");
      WireWriter writer;
      writer.U32(static_cast<std::uint32_t>(ports_[*port].queue.size()));
      writer.U32(ports_[*port].limit);
      writer.U32(0);
      return Ok(writer.Take());
    }
    case JobOp::kSend: {
      auto send = ipc::DecodeSendRequest(request.body);
      if (!send) return Err(JobStatus::kBadRequest, "malformed send");
      const JobStatus status = Enqueue(*send);
      if (status != JobStatus::kOk) return Err(status, "send refused");
      return Ok();
    }
    case JobOp::kSendBatch: {
      auto policy = reader.U8();
      auto timeout = reader.U32();
      auto notify = reader.U32();
      auto count = reader.U32();
      if (!count) return Err(JobStatus::kBadRequest, "malformed train");
      (void)notify;
      std::uint32_t accepted = 0;
      JobStatus status = JobStatus::kOk;
      for (std::uint32_t i = 0; i < *count && status == JobStatus::kOk; ++i) {
        auto message = reader.ReadMessage();
        if (!message) return Err(JobStatus::kBadRequest, "malformed train");
        ipc::SendRequest send;
        send.message = std::move(*message);
        send.policy = static_cast<ipc::FullPolicy>(*policy);
        send.timeout_ms = *timeout;
        status = Enqueue(send);
        if (status == JobStatus::kOk) ++accepted;
      }
      WireWriter answer;
      answer.U32(accepted);
      answer.U16(static_cast<std::uint16_t>(status));
      answer.Bytes(status == JobStatus::kOk ? "" : "refused");
      return Ok(answer.Take());
    }
    case JobOp::kReceiveMany: {
      auto name = reader.U32();
      auto timeout = reader.U32();
      auto max = reader.U32();
      auto port = port_of(name.value_or(0), true);
      if (!port || !max || *max == 0) return Err(JobStatus::kInvalidName, "not a receive right");
      const auto deadline =
          *timeout == ipc::kWaitForever
              ? std::chrono::steady_clock::time_point::max()
              : std::chrono::steady_clock::now() + std::chrono::milliseconds(*timeout);
      receivers_.push_back({request.id, *port, deadline, *max});
      Deliver(*port);
      return std::nullopt;
    }
    case JobOp::kSendReceive:
    case JobOp::kReceive: {
      auto name = reader.U32();
      auto timeout = reader.U32();
      auto port = port_of(name.value_or(0), true);
      if (!port || !timeout) return Err(JobStatus::kInvalidName, "not a receive right");
      if (request.op == JobOp::kSendReceive) {
        auto send = ipc::DecodeSendRequest(request.body.substr(8));
        if (!send) return Err(JobStatus::kBadRequest, "malformed send");
        const JobStatus status = Enqueue(*send);
        if (status != JobStatus::kOk) return Err(status, "send refused");
      }
      const auto deadline =
          *timeout == ipc::kWaitForever
              ? std::chrono::steady_clock::time_point::max()
              : std::chrono::steady_clock::now() + std::chrono::milliseconds(*timeout);
      receivers_.push_back({request.id, *port, deadline});
      Deliver(*port);
      return std::nullopt;
    }
    case JobOp::kNameRegister: {
      auto text = reader.Bytes();
      auto port = port_of(reader.U32().value_or(0), false);
      if (!text || !port) return Err(JobStatus::kInvalidName, "bad register");
      if (!registry_.emplace(*text, *port).second) return Err(JobStatus::kExists, "taken");
      return Ok();
    }
    case JobOp::kNameLookup: {
      auto text = reader.Bytes();
      auto it = registry_.find(text.value_or(""));
      if (it == registry_.end()) return Err(JobStatus::kNotFound, "no such name");
      return Ok(U32Body(NewName({Right::kSend, it->second})));
    }
    case JobOp::kRegionCreate: {
      auto size = reader.U64();
      const int fd = ::memfd_create("fake-region", MFD_CLOEXEC);
      if (!size || fd < 0 || ::ftruncate(fd, static_cast<off_t>(*size)) != 0) {
        return Err(JobStatus::kBadRequest, "region_create failed");
      }
      const std::uint64_t id = next_object_++;
      regions_[id] = fd;
      return Ok(U32Body(NewName({Right::kRegion, id})));
    }
    case JobOp::kRegionMap: {
      auto it = names_.find(reader.U32().value_or(0));
      if (it == names_.end() || it->second.kind != Right::kRegion) {
        return Err(JobStatus::kInvalidName, "not a region");
      }
      const int fd = regions_[it->second.object];
      struct stat info {};
      ::fstat(fd, &info);
      WireWriter writer;
      writer.U64(static_cast<std::uint64_t>(info.st_size));
      Answer answer = Ok(writer.Take());
      answer.fd = fd;
      return answer;
    }
    case JobOp::kDirectOpen:
      return DirectOpen(reader.U32().value_or(0));
    case JobOp::kDirectAccept:
      return DirectAccept(request);
    default:
      return Err(JobStatus::kBadRequest, "the fake agent does not model this op");
  }
}

std::optional<FakeAgent::Answer> FakeAgent::DirectOpen(std::uint32_t send_name) {
  auto name = names_.find(send_name);
  if (name == names_.end() || name->second.kind != Right::kSend) {
    return Err(JobStatus::kInvalidName, "not a send right");
  }
  auto port = direct_.find(name->second.object);
  if (port == direct_.end()) return Err(JobStatus::kUnavailable, "the port takes no direct calls");
  int ends[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ends) != 0) {
    return Err(JobStatus::kUnavailable, "socketpair failed");
  }
  direct_ends_.push_back(::dup(ends[1]));
  if (port->second.accepters.empty()) {
    port->second.queued.push_back(ends[1]);
  } else {
    Answer server = Ok();
    server.fd = ends[1];
    Send(port->second.accepters.front().request, server);
    port->second.accepters.pop_front();
    ::close(ends[1]);
  }
  Answer client = Ok();
  client.fd = ends[0];
  client.owns_fd = true;
  return client;
}

std::optional<FakeAgent::Answer> FakeAgent::DirectAccept(const ipc::JobRequest& request) {
  WireReader reader(request.body);
  auto name = reader.U32();
  auto timeout = reader.U32();
  auto it = names_.find(name.value_or(0));
  if (!timeout || it == names_.end() || it->second.kind != Right::kReceive) {
    return Err(JobStatus::kInvalidName, "not a receive right");
  }
  DirectPort& port = direct_[it->second.object];
  if (!port.queued.empty()) {
    Answer server = Ok();
    server.fd = port.queued.front();
    port.queued.pop_front();
    Send(request.id, server);
    ::close(server.fd);
    return std::nullopt;
  }
  const auto deadline = *timeout == ipc::kWaitForever ? std::chrono::steady_clock::time_point::max()
                                                      : std::chrono::steady_clock::now() +
                                                            std::chrono::milliseconds(*timeout);
  port.accepters.push_back({request.id, deadline});
  return std::nullopt;
}

JobStatus FakeAgent::Enqueue(const ipc::SendRequest& request) {
  ipc::Message message = request.message;
  auto dest = names_.find(message.destination);
  if (dest == names_.end() || dest->second.kind == Right::kRegion) return JobStatus::kInvalidName;
  const std::uint64_t port_id = dest->second.object;
  if (!ports_.contains(port_id)) return JobStatus::kDeadName;
  Port& port = ports_[port_id];
  // A wait without end is taken over the limit: the agent would hold it until the receiver made
  // room and then take it, and nothing here can hold a request (a slow receiver under ASan left a
  // full queue refusing a PortWriter's resends, which ended its stream: a flaky StreamFixture).
  const bool waits_forever =
      request.policy == ipc::FullPolicy::kWait && request.timeout_ms == ipc::kWaitForever;
  if (port.queue.size() >= port.limit && !waits_forever) {
    return request.policy == ipc::FullPolicy::kWait ? JobStatus::kTimedOut : JobStatus::kQueueFull;
  }
  if (message.destination_disposition == ipc::Disposition::kMoveSendOnce) {
    names_.erase(dest);
  }
  // The receiver is this same job: it gets a new name for the reply right.
  if (message.reply != 0) {
    auto reply = names_.find(message.reply);
    if (reply == names_.end()) return JobStatus::kInvalidName;
    const std::uint64_t reply_port = reply->second.object;
    switch (message.reply_disposition) {
      case ipc::Disposition::kMakeSendOnce:
        message.reply = NewName({Right::kSendOnce, reply_port});
        break;
      case ipc::Disposition::kMakeSend:
      case ipc::Disposition::kCopySend:
        message.reply = NewName({Right::kSend, reply_port});
        break;
      default:
        break;
    }
  }
  message.destination = 0;  // set to the receive name on delivery
  ++sent_ids_[message.id];
  if (drop_ && drop_(message)) return JobStatus::kOk;
  port.queue.push_back(std::move(message));
  Deliver(port_id);
  return JobStatus::kOk;
}

void FakeAgent::Deliver(std::uint64_t port_id) {
  Port& port = ports_[port_id];
  while (!port.queue.empty()) {
    auto it = std::find_if(receivers_.begin(), receivers_.end(),
                           [&](const Receiver& r) { return r.port == port_id; });
    if (it == receivers_.end()) return;
    std::uint32_t receive_name = 0;
    for (auto& [name, right] : names_) {
      if (right.kind == Right::kReceive && right.object == port_id) receive_name = name;
    }
    WireWriter writer;
    const std::uint32_t count =
        it->many == 0 ? 1 : std::min<std::uint32_t>(it->many, port.queue.size());
    if (it->many != 0) writer.U32(count);
    for (std::uint32_t i = 0; i < count; ++i) {
      ipc::Message message = std::move(port.queue.front());
      port.queue.pop_front();
      message.destination = receive_name;
      writer.WriteMessage(message);
    }
    const std::uint32_t request = it->request;
    receivers_.erase(it);
    Send(request, Ok(writer.Take()));
  }
}

void FakeAgent::Expire() {
  const auto now = std::chrono::steady_clock::now();
  for (auto& [id, port] : direct_) {
    while (!port.accepters.empty() && port.accepters.front().deadline <= now) {
      Send(port.accepters.front().request, Err(JobStatus::kTimedOut, "no direct connection"));
      port.accepters.pop_front();
    }
  }
  for (auto it = receivers_.begin(); it != receivers_.end();) {
    if (it->deadline <= now) {
      Send(it->request, Err(JobStatus::kTimedOut, "receive timed out"));
      it = receivers_.erase(it);
    } else {
      ++it;
    }
  }
}

}  // namespace tern::testing
