#include "tern/agent/ipc_service.hpp"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <spdlog/spdlog.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <span>
#include <tern/ipc/blast_outbox.hpp>
#include <tern/ipc/direct_broker.hpp>
#include <tern/ipc/direct_wire.hpp>
#include <tern/ipc/frame.hpp>
#include <tern/ipc/job_wire.hpp>
#include <tern/ipc/port_router.hpp>
#include <tern/jobs/job_launcher.hpp>
#include <tern/jobs/unique_fd.hpp>
#include <tern/migrate/criu.hpp>

#include "tern/agent/timer_schedule.hpp"

namespace tern::agent {
namespace {

using jobs::UniqueFd;

// Region memory: one memfd per region, kept while the router holds the region.
class MemfdRegions : public ipc::RegionStore {
 public:
  bool Create(ipc::ObjectId id, std::uint64_t size) override {
    UniqueFd fd(::memfd_create("tern-region", MFD_CLOEXEC));
    if (!fd.valid() || ::ftruncate(fd.get(), static_cast<off_t>(size)) != 0) return false;
    fds_[id] = std::move(fd);
    return true;
  }
  std::optional<std::string> Read(ipc::ObjectId id) override {
    auto it = fds_.find(id);
    if (it == fds_.end()) return std::nullopt;
    const off_t size = ::lseek(it->second.get(), 0, SEEK_END);
    if (size < 0) return std::nullopt;
    std::string bytes(static_cast<std::size_t>(size), '\0');
    std::size_t done = 0;
    while (done < bytes.size()) {
      const ssize_t got = ::pread(it->second.get(), bytes.data() + done, bytes.size() - done,
                                  static_cast<off_t>(done));
      if (got <= 0) return std::nullopt;
      done += static_cast<std::size_t>(got);
    }
    return bytes;
  }
  bool Write(ipc::ObjectId id, std::string_view bytes) override {
    auto it = fds_.find(id);
    if (it == fds_.end() || ::ftruncate(it->second.get(), static_cast<off_t>(bytes.size())) != 0) {
      return false;
    }
    std::size_t done = 0;
    while (done < bytes.size()) {
      const ssize_t put = ::pwrite(it->second.get(), bytes.data() + done, bytes.size() - done,
                                   static_cast<off_t>(done));
      if (put <= 0) return false;
      done += static_cast<std::size_t>(put);
    }
    return true;
  }
  void Destroy(ipc::ObjectId id) override { fds_.erase(id); }
  int Fd(ipc::ObjectId id) const {
    auto it = fds_.find(id);
    return it == fds_.end() ? -1 : it->second.get();
  }

 private:
  std::map<ipc::ObjectId, UniqueFd> fds_;
};

}  // namespace

class IpcService::Impl : public std::enable_shared_from_this<IpcService::Impl> {
 public:
  Impl(boost::asio::io_context& io, std::uint64_t node_id, NodeSender send, NodeBacklog backlog)
      : io_(io),
        self_(node_id),
        router_(node_id, regions_),
        send_(std::move(send)),
        backlog_(std::move(backlog)) {
    StartDirectListener();
  }

  struct Channel {
    explicit Channel(boost::asio::io_context& io, int fd) : socket(io, fd) {}
    boost::asio::posix::stream_descriptor socket;
    // A job may send one message of up to kMaxMessageBytes.
    ipc::FrameDecoder decoder{ipc::kMaxMessageBytes + (1u << 20)};
    // Bytes to write to the job: its own, or a job's data shared from where they are (a
    // message's frame; large data items are never copied into a reply).
    struct Chunk {
      std::string bytes;
      std::shared_ptr<const std::string> owner;  // when set, the chunk is `shared`
      std::string_view shared;
      UniqueFd fd;  // sent with the chunk's first byte, then closed
      std::size_t offset = 0;

      std::string_view data() const { return owner ? shared : std::string_view(bytes); }
      std::size_t left() const { return data().size() - offset; }
    };
    std::deque<Chunk> out;
    bool writing = false;
    bool closed = false;
    std::string job_end;  // "socket:[INODE]" of the job's end
  };

  int Open(const std::string& job) {
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, fds) != 0) {
      spdlog::error("cannot create an IPC channel for job {}: {}", job, std::strerror(errno));
      return -1;
    }
    // The job's end blocks (libtern expects it to).
    const int flags = ::fcntl(fds[1], F_GETFL);
    ::fcntl(fds[1], F_SETFL, flags & ~O_NONBLOCK);
    Close(job);
    auto channel = std::make_shared<Channel>(io_, fds[0]);
    struct stat job_end {};
    if (::fstat(fds[1], &job_end) == 0) {
      channel->job_end = "socket:[" + std::to_string(job_end.st_ino) + "]";
    }
    channels_[job] = channel;
    router_.JobAttached(job);
    Read(job, channel);
    return fds[1];
  }

  void Close(const std::string& job) {
    auto it = channels_.find(job);
    if (it == channels_.end()) return;
    auto channel = it->second;
    channels_.erase(it);
    channel->closed = true;
    boost::system::error_code ignored;
    channel->socket.close(ignored);
    router_.JobGone(job);
    broker_.JobGone(job);
    Run();
    RunDirect();
  }

  // A wait for readability, and the read in the handler (not async_read_some): HandOff reads
  // the channel synchronously, and no read may have taken bytes it has not handed on yet.
  void Read(const std::string& job, const std::shared_ptr<Channel>& channel) {
    channel->socket.async_wait(
        boost::asio::posix::descriptor_base::wait_read,
        [self = shared_from_this(), job, channel](const boost::system::error_code& error) {
          if (error || channel->closed) return;
          self->OnReadable(job, channel);
        });
  }

  // The links' backlogs are checked after this channel's requests went out (a job's requests
  // are what fills them), not before each read.
  void OnReadable(const std::string& job, const std::shared_ptr<Channel>& channel) {
    if (holding_) return Hold(job, channel);
    if (!Consume(job, channel)) return;
    Run();
    if (channel->closed) return;
    CheckDirectRights(job);
    if (channel->closed) return;
    if (Backlogged(kHoldAbove)) return Hold(job, channel);
    Read(job, channel);
  }

  // Whether a link to some node has more than `limit` bytes waiting to be written.
  // A link that does not drain for kMaxHold (a peer that stopped reading, and whose heartbeats
  // have not yet closed its link) no longer holds anyone back: its queue then fills and the link
  // closes, as before holding existed, instead of this node's IPC stopping with it.
  // With `give_up`, the links over `limit` are marked stuck (logged) instead.
  bool Backlogged(std::size_t limit, bool give_up = false) {
    if (!backlog_) return false;
    bool backlogged = false;
    for (const auto& [node, outbox] : outboxes_) {
      const std::size_t bytes = backlog_(node);
      if (stuck_.contains(node)) {
        if (bytes <= kResumeBelow) stuck_.erase(node);
      } else if (bytes > limit && give_up) {
        spdlog::warn(
            "IPC: the link to node {:016x} has not drained for {} s; no longer holding jobs "
            "back for it",
            node, std::chrono::duration_cast<std::chrono::seconds>(kMaxHold).count());
        stuck_.insert(node);
      } else if (bytes > limit) {
        backlogged = true;
      }
    }
    return backlogged;
  }

  // The channel is read again once every link has drained (checked each kHoldCheck).
  void Hold(const std::string& job, const std::shared_ptr<Channel>& channel) {
    held_.emplace_back(job, channel);
    if (holding_) return;
    holding_ = true;
    hold_started_ = std::chrono::steady_clock::now();
    spdlog::debug("IPC: holding jobs' requests back: a link to another node is backlogged");
    CheckHold();
  }

  void CheckHold() {
    hold_timer_.expires_after(kHoldCheck);
    hold_timer_.async_wait([self = shared_from_this()](const boost::system::error_code& error) {
      if (error || self->stopped_) return;
      const bool give_up = std::chrono::steady_clock::now() - self->hold_started_ >= kMaxHold;
      if (self->Backlogged(kResumeBelow, give_up)) return self->CheckHold();
      self->holding_ = false;
      for (auto& [job, weak] : std::exchange(self->held_, {})) {
        if (auto channel = weak.lock(); channel && !channel->closed) self->Read(job, channel);
      }
    });
  }

  // Reads what the job wrote and hands every complete request to the router; false when the
  // channel was closed (end of file, or a broken protocol).
  bool Consume(const std::string& job, const std::shared_ptr<Channel>& channel) {
    for (;;) {
      // Straight into the decoder: a large request lands in its own frame, never copied.
      const std::span<char> space = channel->decoder.Prepare();
      const ssize_t got = ::recv(channel->socket.native_handle(), space.data(), space.size(), 0);
      if (got > 0) {
        if (auto fed = channel->decoder.Commit(static_cast<std::size_t>(got)); !fed) {
          spdlog::warn("job {}: closing its IPC channel: {}", job, fed.error().message);
          Close(job);
          return false;
        }
        if (static_cast<std::size_t>(got) < space.size()) break;
        continue;
      }
      if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
      if (got < 0 && errno == EINTR) continue;
      // End of file: the job closed its channel (or ended); its rights go when it ends.
      spdlog::debug("job {}: IPC channel closed by the job", job);
      Close(job);
      return false;
    }
    while (auto frame = channel->decoder.Next()) {
      if (frame->type != ipc::FrameType::kIpcRequest) {
        spdlog::warn("job {}: closing its IPC channel: frame type {} is not an IPC request", job,
                     static_cast<int>(frame->type));
        Close(job);
        return false;
      }
      if (frame->payload.size() >= ipc::kJobRequestHeaderSize) {
        ipc::WireReader header(frame->payload);
        const std::uint32_t request = *header.U32();
        const auto op = static_cast<ipc::JobOp>(*header.U16());
        if (op == ipc::JobOp::kDirectOpen || op == ipc::JobOp::kDirectAccept) {
          OnDirectRequest(job, request, op, header.rest());
          RunDirect();
          if (channel->closed) return false;
          continue;
        }
      }
      auto payload = std::make_shared<const std::string>(std::move(frame->payload));
      if (auto handled = router_.JobRequest(job, std::move(payload)); !handled) {
        spdlog::warn("job {}: closing its IPC channel: {}", job, handled.error().message);
        Close(job);
        return false;
      }
    }
    return true;
  }

  ipc::PortRouter::Export HandOff(const std::string& job, std::uint64_t to_node, int init_pid) {
    auto it = channels_.find(job);
    if (it == channels_.end()) return {ipc::PortRouter::ExportOutcome::kExported, ""};
    auto channel = it->second;
    // The job is frozen: what it wrote is all there is. Requests complete enough to run, run.
    if (!Consume(job, channel)) return {ipc::PortRouter::ExportOutcome::kExported, ""};
    Run();
    if (channel->closed) return {ipc::PortRouter::ExportOutcome::kExported, ""};
    // The job's end of the channel, through its frozen init (pidfd_getfd): what waits there
    // unread travels with the job. Taken before the rights leave, so that a failure here
    // changes nothing.
    auto job_end = JobEnd(init_pid);
    if (!job_end) return {ipc::PortRouter::ExportOutcome::kRefused, job_end.error().message};
    auto exported = router_.ExportJob(job, to_node);
    Run();  // frames the export asked for, and nothing for the job any more
    if (exported.outcome != ipc::PortRouter::ExportOutcome::kExported) return exported;
    // Accepts still waiting are answered now, so that the answers travel with the job.
    broker_.Leaving(job);
    RunDirect();
    // What the job has not read: first what waits in its socket, then what we did not write.
    std::string to_job = TakeUnread(job_end->get());
    for (const auto& chunk : channel->out) to_job.append(chunk.data().substr(chunk.offset));
    channel->out.clear();
    const std::string from_job = channel->decoder.TakeBuffered();
    spdlog::info(
        "job {}: IPC state handed off: {} bytes of rights, {} bytes of answers it has not read, "
        "{} bytes of a request it was writing",
        job, exported.state.size(), to_job.size(), from_job.size());
    ipc::WireWriter out;
    out.Bytes(exported.state);
    out.Bytes(to_job);
    out.Bytes(from_job);
    Close(job);  // the router holds nothing of the job now: nothing is released
    return {ipc::PortRouter::ExportOutcome::kExported, out.Take()};
  }

  // A copy of the job's end of its channel, fd 3 of its init.
  static Expected<UniqueFd> JobEnd(int init_pid) {
    UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, init_pid, 0)));
    if (!pidfd.valid()) {
      return Fail(std::string("cannot reach the job's IPC channel: pidfd_open: ") +
                  std::strerror(errno));
    }
    UniqueFd end(static_cast<int>(::syscall(SYS_pidfd_getfd, pidfd.get(), jobs::kJobIpcFd, 0)));
    if (!end.valid()) {
      return Fail(std::string("cannot reach the job's IPC channel: pidfd_getfd: ") +
                  std::strerror(errno));
    }
    return end;
  }

  // Everything queued in the job's end that it has not read yet (it is frozen: nothing more
  // arrives but what we write, and we write nothing now).
  static std::string TakeUnread(int job_end) {
    std::string bytes;
    char buffer[65536];
    for (;;) {
      const ssize_t got = ::recv(job_end, buffer, sizeof buffer, MSG_DONTWAIT);
      if (got > 0) {
        bytes.append(buffer, static_cast<std::size_t>(got));
        continue;
      }
      if (got < 0 && errno == EINTR) continue;
      return bytes;  // EAGAIN: all taken
    }
  }

  Expected<void> TakeOver(const std::string& job, std::string_view state) {
    if (state.empty()) return {};
    ipc::WireReader in(state);
    auto rights = in.Bytes();
    auto to_job = in.Bytes();
    auto from_job = in.Bytes();
    if (!from_job || !in.AtEnd()) return Fail("malformed IPC hand-off for job " + job);
    auto it = channels_.find(job);
    if (it == channels_.end()) return Fail("job " + job + " has no IPC channel here");
    auto channel = it->second;
    if (auto imported = router_.ImportJob(job, *rights); !imported) return imported;
    if (!from_job->empty()) {
      if (auto fed = channel->decoder.Feed(*from_job); !fed) return fed;
    }
    if (!to_job->empty()) {
      Channel::Chunk chunk;
      chunk.bytes = std::move(*to_job);
      channel->out.push_front(std::move(chunk));
    }
    Run();
    Flush(job, channel);
    return {};
  }

  // Carries out what the router asked for.
  void Run() {
    auto actions = router_.TakeActions();
    // Queue every reply first, then write once per channel: a batch of requests gets its
    // answers in one write, not one each.
    std::map<std::string, std::shared_ptr<Channel>> to_flush;
    for (auto& reply : actions.replies) {
      auto it = channels_.find(reply.job);
      if (it == channels_.end()) continue;
      Queue(*it->second, reply);
      to_flush.emplace(reply.job, it->second);
    }
    for (auto& [job, channel] : to_flush) {
      Flush(job, channel);
      // A job that asks and never reads its answers would make the agent hold them forever.
      std::size_t pending = 0;
      for (const auto& chunk : channel->out) pending += chunk.left();
      if (pending > kMaxUnreadReplyBytes) {
        spdlog::warn("job {}: closing its IPC channel: {} bytes of answers it does not read", job,
                     pending);
        Close(job);
      }
    }
    // The frames for one node leave in one write (a call's deferred ok and its reply, say),
    // through its outbox: a large payload goes as a blast, and what follows waits for it.
    std::map<std::uint64_t, std::vector<ipc::Frame>> batches;
    for (auto& frame : actions.frames) {
      outboxes_[frame.node].Add(std::move(frame.payload), batches[frame.node]);
    }
    for (auto& [node, batch] : batches) SendBatch(node, batch);
    for (std::uint64_t id : actions.cancelled_timers) schedule_.Cancel(id);
    const auto now = TimerSchedule::Clock::now();
    for (const auto& timer : actions.timers) schedule_.Add(timer.id, now + timer.after);
    ArmTimer();
  }

  // Queues a reply frame without copying what it carries: a large payload becomes a chunk of
  // its own (moved), the job data it shares are written from where they are, and only small
  // replies are gathered into one chunk (so that a batch of answers leaves in one write).
  void Queue(Channel& channel, ipc::PortRouter::JobReplyAction& reply) {
    auto& out = channel.out;
    // `fd` goes with the chunk's first byte: only the frame's first piece carries one.
    const auto add = [&](std::string bytes, UniqueFd fd) {
      if (bytes.empty()) return;
      if (!fd.valid() && bytes.size() < kGatherBelow && !out.empty() && !out.back().owner &&
          out.back().offset == 0 && out.back().bytes.size() < kGatherBelow) {
        out.back().bytes.append(bytes);
        return;
      }
      Channel::Chunk chunk;
      chunk.bytes = std::move(bytes);
      chunk.fd = std::move(fd);
      out.push_back(std::move(chunk));
    };
    std::string piece;
    ipc::AppendFrameHeader(piece, ipc::FrameType::kIpcReply,
                           static_cast<std::uint32_t>(reply.size()));
    // The chunk owns what it sends: a copy of the region's memfd.
    UniqueFd fd;
    if (reply.region_fd) {
      if (const int region = regions_.Fd(*reply.region_fd); region >= 0) {
        fd.Reset(::fcntl(region, F_DUPFD_CLOEXEC, 0));
      }
    }
    if (reply.shared.empty() && reply.payload.size() >= kGatherBelow) {
      add(std::move(piece), std::move(fd));
      add(std::move(reply.payload), UniqueFd());
      return;
    }
    ipc::ForEachPiece(
        reply.payload, reply.shared, [&](std::string_view bytes) { piece.append(bytes); },
        [&](ipc::SharedSpan& span) {
          add(std::exchange(piece, {}), std::move(fd));
          Channel::Chunk chunk;
          chunk.owner = std::move(span.owner);
          chunk.shared = span.bytes;
          out.push_back(std::move(chunk));
        });
    add(std::move(piece), std::move(fd));
  }

  // One Asio timer for all the router's timers, armed at the earliest deadline.
  void ArmTimer() {
    if (stopped_ || !schedule_.arm_needed()) return;
    const auto at = *schedule_.next_deadline();
    schedule_.Armed(at);
    timer_.expires_at(at);
    timer_.async_wait([self = shared_from_this()](const boost::system::error_code& error) {
      if (error == boost::asio::error::operation_aborted || self->stopped_) return;
      self->schedule_.Armed(std::nullopt);
      for (std::uint64_t id : self->schedule_.TakeDue(TimerSchedule::Clock::now())) {
        self->router_.Timer(id);
      }
      self->Run();  // re-arms for what is left
      self->ArmTimer();
    });
  }

  void SendBatch(std::uint64_t node, std::vector<ipc::Frame>& batch) {
    if (batch.empty()) return;
    if (!send_(node, std::move(batch))) {
      // No link: the router learns it from NodeDown; nothing else to do here.
      spdlog::debug("IPC frames to node {:016x} dropped: no link", node);
    }
    batch.clear();
  }

  // A chunk of a blast from `from`: taken, acknowledged (the sender keeps at most
  // BlastOutbox::kWindowChunks on their way), and the message handed on once whole.
  Expected<void> OnBlast(std::uint64_t from, std::string_view payload) {
    const auto chunk = ipc::ParseBlastChunk(payload);
    if (!chunk) return Fail("malformed IPC blast chunk");
    auto& assembly = blasts_[{from, chunk->blast}];
    if (chunk->index != assembly.next) {
      blasts_.erase({from, chunk->blast});
      return Fail("IPC blast chunk out of order");
    }
    assembly.bytes.append(chunk->bytes);
    std::vector<ipc::Frame> ack;
    ack.push_back({ipc::FrameType::kIpcBlastAck, ipc::EncodeBlastAck(chunk->blast, chunk->index)});
    send_(from, std::move(ack));
    if (++assembly.next < chunk->count) return {};
    auto message = std::make_shared<const std::string>(std::move(assembly.bytes));
    blasts_.erase({from, chunk->blast});
    return router_.NodeFrame(from, std::move(message));
  }

  // The peer took a chunk: what waited for room in the window leaves.
  void OnBlastAck(std::uint64_t from) {
    auto outbox = outboxes_.find(from);
    if (outbox == outboxes_.end()) return;
    std::vector<ipc::Frame> now;
    outbox->second.OnAck(now);
    SendBatch(from, now);
  }

  void ScheduleRun() {
    if (run_scheduled_) return;
    run_scheduled_ = true;
    boost::asio::post(io_, [self = shared_from_this()] {
      self->run_scheduled_ = false;
      if (!self->stopped_) self->Run();
    });
  }

  // Writes what is queued, many chunks per call; a chunk with an fd starts a call of its own
  // (the fd travels with its first byte).
  void Flush(const std::string& job, const std::shared_ptr<Channel>& channel) {
    if (channel->writing || channel->closed) return;
    const int fd = channel->socket.native_handle();
    constexpr std::size_t kMaxIov = 64;
    while (!channel->out.empty()) {
      iovec iov[kMaxIov];
      std::size_t count = 0;
      for (const auto& chunk : channel->out) {
        if (count == kMaxIov || (count > 0 && chunk.fd.valid())) break;
        const std::string_view left = chunk.data().substr(chunk.offset);
        iov[count++] = {const_cast<char*>(left.data()), left.size()};
      }
      msghdr message{};
      message.msg_iov = iov;
      message.msg_iovlen = count;
      alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
      auto& first = channel->out.front();
      const bool with_fd = first.fd.valid() && first.offset == 0;
      if (with_fd) {
        message.msg_control = control;
        message.msg_controllen = sizeof control;
        cmsghdr* header = CMSG_FIRSTHDR(&message);
        header->cmsg_level = SOL_SOCKET;
        header->cmsg_type = SCM_RIGHTS;
        header->cmsg_len = CMSG_LEN(sizeof(int));
        const int passed = first.fd.get();
        std::memcpy(CMSG_DATA(header), &passed, sizeof(int));
      }
      const ssize_t put = ::sendmsg(fd, &message, MSG_NOSIGNAL);
      if (put < 0 && errno == EINTR) continue;
      if (put < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        channel->writing = true;
        channel->socket.async_wait(
            boost::asio::posix::descriptor_base::wait_write,
            [self = shared_from_this(), job, channel](const boost::system::error_code& error) {
              channel->writing = false;
              if (error || channel->closed) return;
              self->Flush(job, channel);
            });
        return;
      }
      if (put < 0) {
        spdlog::debug("job {}: IPC channel write failed: {}", job, std::strerror(errno));
        return Close(job);
      }
      if (with_fd) first.fd.Reset();  // the job has it now
      auto written = static_cast<std::size_t>(put);
      while (!channel->out.empty() && (written > 0 || channel->out.front().left() == 0)) {
        auto& chunk = channel->out.front();
        const std::size_t step = std::min(written, chunk.left());
        chunk.offset += step;
        written -= step;
        if (chunk.left() == 0) channel->out.pop_front();
      }
    }
  }

  // ---- direct calls (docs/ipc.md "Direct calls") ------------------------------------------

  // The listener for granted connections, on every address (other nodes connect to it).
  void StartDirectListener() {
    boost::system::error_code error;
    const boost::asio::ip::tcp::endpoint any(boost::asio::ip::tcp::v4(), 0);
    acceptor_.open(any.protocol(), error);
    if (!error) ::fcntl(acceptor_.native_handle(), F_SETFD, FD_CLOEXEC);
    if (!error) acceptor_.bind(any, error);
    if (!error) acceptor_.listen(boost::asio::socket_base::max_listen_connections, error);
    if (error) {
      spdlog::warn("IPC: no listener for direct calls ({}): jobs use the agent path",
                   error.message());
      acceptor_.close(error);
      return;
    }
    direct_port_ = acceptor_.local_endpoint().port();
    spdlog::info("IPC: direct calls listener on TCP port {}", direct_port_);
  }

  // Accepting starts with the first connection to serve (the io_context needs our shared_ptr).
  void AcceptDirect() {
    if (!acceptor_.is_open() || stopped_) return;
    acceptor_.async_accept([self = shared_from_this()](const boost::system::error_code& error,
                                                       boost::asio::ip::tcp::socket socket) {
      if (self->stopped_ || error == boost::asio::error::operation_aborted) return;
      if (!error) self->ReadToken(std::move(socket));
      self->AcceptDirect();
    });
  }

  // A granted connection: exactly its 16-byte token, within kTokenWait, then it is the broker's.
  struct Incoming {
    Incoming(boost::asio::io_context& io, boost::asio::ip::tcp::socket s)
        : socket(std::move(s)), timer(io) {}
    boost::asio::ip::tcp::socket socket;
    boost::asio::steady_timer timer;
    ipc::DirectToken token{};
  };
  void ReadToken(boost::asio::ip::tcp::socket socket) {
    ::fcntl(socket.native_handle(), F_SETFD, FD_CLOEXEC);
    auto incoming = std::make_shared<Incoming>(io_, std::move(socket));
    incoming->timer.expires_after(kTokenWait);
    incoming->timer.async_wait([incoming](const boost::system::error_code& error) {
      if (error) return;
      boost::system::error_code ignored;
      incoming->socket.close(ignored);  // the read fails, and the connection is dropped
    });
    boost::asio::async_read(
        incoming->socket, boost::asio::buffer(incoming->token),
        [self = shared_from_this(), incoming](const boost::system::error_code& error, std::size_t) {
          incoming->timer.cancel();
          if (error || self->stopped_) return;
          auto handed = self->HandOver(incoming->socket);
          if (!handed) {
            spdlog::debug("IPC: direct connection dropped: {}", handed.error().message);
            return;
          }
          const auto [connection, inode] = *handed;
          self->broker_.Arrived(connection, inode, incoming->token,
                                ipc::DirectBroker::Clock::now());
          self->RunDirect();
        });
  }

  // Makes `socket` a direct connection end: the options both ends need, then a blocking
  // descriptor of our own (the job gets it; Asio's is closed). Returns its id and inode.
  Expected<std::pair<std::uint64_t, std::uint64_t>> HandOver(boost::asio::ip::tcp::socket& socket) {
    const int fd = socket.native_handle();
    const int on = 1, idle = 5, interval = 1, probes = 3;
    if (::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on) != 0 ||
        ::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on) != 0 ||
        ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle) != 0 ||
        ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof interval) != 0 ||
        ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &probes, sizeof probes) != 0) {
      return Fail(std::string("setsockopt: ") + std::strerror(errno));
    }
    UniqueFd own(::fcntl(fd, F_DUPFD_CLOEXEC, 0));
    if (!own.valid()) return Fail(std::string("dup: ") + std::strerror(errno));
    boost::system::error_code ignored;
    socket.close(ignored);
    // O_NONBLOCK belongs to the open socket, which the job shares: Asio's mode must not leak.
    const int flags = ::fcntl(own.get(), F_GETFL);
    if (flags < 0 || ::fcntl(own.get(), F_SETFL, flags & ~O_NONBLOCK) != 0) {
      return Fail(std::string("fcntl: ") + std::strerror(errno));
    }
    struct stat status {};
    if (::fstat(own.get(), &status) != 0)
      return Fail(std::string("fstat: ") + std::strerror(errno));
    const std::uint64_t id = next_connection_++;
    direct_connections_[id] = std::move(own);
    return std::make_pair(id, static_cast<std::uint64_t>(status.st_ino));
  }

  // Serves a job's direct_open / direct_accept (the router knows neither).
  void OnDirectRequest(const std::string& job, std::uint32_t request, ipc::JobOp op,
                       std::string_view body) {
    const auto now = ipc::DirectBroker::Clock::now();
    const auto answer = [&](ipc::JobStatus status, const std::string& why) {
      Reply(ipc::DirectBroker::Reply{job, request, status, why, 0});
    };
    ipc::WireReader in(body);
    const auto name = in.U32();
    if (op == ipc::JobOp::kDirectAccept) {
      const auto timeout = in.U32();
      if (!timeout || !in.AtEnd()) return answer(ipc::JobStatus::kBadRequest, "malformed body");
      const auto port = router_.ReceiveRightPort(job, *name);
      if (!port) return answer(ipc::JobStatus::kInvalidName, "not a receive right");
      if (!acceptor_.is_open()) {
        return answer(ipc::JobStatus::kUnavailable, "this agent has no direct call listener");
      }
      broker_.Accept(job, request, *name, *port, *timeout, now);
      return;
    }
    if (!name || !in.AtEnd()) return answer(ipc::JobStatus::kBadRequest, "malformed body");
    const auto port = router_.SendRightTarget(job, *name);
    if (!port) return answer(ipc::JobStatus::kInvalidName, "not a send right");
    if (broker_.Suspended(job)) return answer(ipc::JobStatus::kUnavailable, "the job is moving");
    const std::uint64_t ask = broker_.StartAsk(job, request, *name, *port, now);
    OnAsk(self_, ipc::DirectAsk{ask, self_, *port});
  }

  // An ask for a connection to `ask.port`, from this node's job or another agent (`from`):
  // granted if the receive right is here and accepts, passed on to where the port's home says
  // the right is, or refused.
  void OnAsk(std::uint64_t from, const ipc::DirectAsk& ask) {
    const auto refuse = [&](const std::string& why, bool dead = false) {
      if (ask.origin == self_) return broker_.AskRefused(ask.ask, why, dead);
      SendDirect(ask.origin, ipc::DirectRefuse{ask.ask, why});
    };
    if (auto acceptor = broker_.Acceptor(ask.port);
        acceptor && router_.ReceiveRightPort(acceptor->first, acceptor->second) == ask.port) {
      auto token = broker_.Grant(ask.port, ipc::DirectBroker::Clock::now());
      if (!token) return refuse(token.error().message);
      const ipc::DirectGrant grant{ask.ask, direct_port_, *token};
      if (ask.origin == self_) return Connect(grant, "127.0.0.1");
      SendDirect(ask.origin, grant);
      return;
    }
    if (ask.port.home == self_) {
      const auto receiver = router_.ReceiverOf(ask.port);
      if (!receiver) return refuse("the port is dead", true);
      if (receiver->node == self_)
        return refuse("the port's receiver never asked for direct calls");
      if (receiver->node == 0) return refuse("the port's receive right is moving");
      if (receiver->node == from) return refuse("the port's receive right is moving");
      if (!SendDirect(receiver->node, ask)) return refuse("the receiver's node cannot be reached");
      return;
    }
    if (from == self_) {
      if (!SendDirect(ask.port.home, ask)) return refuse("the port's home node cannot be reached");
      return;
    }
    refuse("the port's receive right is not on this node");
  }

  bool SendDirect(std::uint64_t node, const ipc::DirectFrame& frame) {
    std::vector<ipc::Frame> frames;
    frames.push_back({ipc::FrameType::kIpcDirect, ipc::EncodeDirectFrame(frame)});
    return send_(node, std::move(frames));
  }

  Expected<void> OnDirectFrame(std::uint64_t from, std::string_view payload) {
    auto frame = ipc::ParseDirectFrame(payload);
    if (!frame) return Unexpected<Error>{frame.error()};
    if (const auto* ask = std::get_if<ipc::DirectAsk>(&*frame)) {
      OnAsk(from, *ask);
    } else if (const auto* grant = std::get_if<ipc::DirectGrant>(&*frame)) {
      if (broker_.AskPending(grant->ask)) {
        const std::string host = node_address_ ? node_address_(from) : "";
        if (host.empty()) {
          broker_.AskRefused(grant->ask, "the receiver's node has no known address");
        } else {
          Connect(*grant, host);
        }
      }
    } else {
      const auto& refuse = std::get<ipc::DirectRefuse>(*frame);
      broker_.AskRefused(refuse.ask, refuse.why);
    }
    RunDirect();
    return {};
  }

  // The client's end of a granted connection: connect, present the token, hand it over.
  struct Outgoing {
    explicit Outgoing(boost::asio::io_context& io) : socket(io), timer(io) {}
    boost::asio::ip::tcp::socket socket;
    boost::asio::steady_timer timer;
    ipc::DirectGrant grant;
  };
  void Connect(const ipc::DirectGrant& grant, const std::string& host) {
    boost::system::error_code error;
    const auto address = boost::asio::ip::make_address(host, error);
    if (error) return broker_.AskRefused(grant.ask, "bad node address " + host);
    auto outgoing = std::make_shared<Outgoing>(io_);
    outgoing->grant = grant;
    const boost::asio::ip::tcp::endpoint to(address, grant.tcp_port);
    outgoing->socket.open(to.protocol(), error);
    if (error) return broker_.AskRefused(grant.ask, "socket: " + error.message());
    ::fcntl(outgoing->socket.native_handle(), F_SETFD, FD_CLOEXEC);
    // The ask is answered by its deadline anyway; this frees the socket of a stuck connect.
    outgoing->timer.expires_after(ipc::DirectBroker::kAskDeadline);
    outgoing->timer.async_wait([outgoing](const boost::system::error_code& fired) {
      if (fired) return;
      boost::system::error_code ignored;
      outgoing->socket.close(ignored);
    });
    outgoing->socket.async_connect(to, [self = shared_from_this(), outgoing,
                                        host](const boost::system::error_code& connected) {
      if (self->stopped_) return;
      if (connected) {
        outgoing->timer.cancel();
        self->broker_.AskRefused(outgoing->grant.ask,
                                 "cannot connect to " + host + ": " + connected.message());
        return self->RunDirect();
      }
      boost::asio::async_write(
          outgoing->socket, boost::asio::buffer(outgoing->grant.token),
          [self, outgoing](const boost::system::error_code& written, std::size_t) {
            outgoing->timer.cancel();
            if (self->stopped_) return;
            if (written) {
              self->broker_.AskRefused(outgoing->grant.ask,
                                       "direct connection set-up failed: " + written.message());
              return self->RunDirect();
            }
            auto handed = self->HandOver(outgoing->socket);
            if (!handed) {
              self->broker_.AskRefused(outgoing->grant.ask, "direct connection set-up failed: " +
                                                                handed.error().message);
            } else {
              self->broker_.AskConnected(outgoing->grant.ask, handed->first, handed->second);
            }
            self->RunDirect();
          });
    });
  }

  // After a job's requests ran: its connections whose right is gone are revoked, and the ports
  // whose receive right left it stop accepting.
  void CheckDirectRights(const std::string& job) {
    broker_.CheckRights(job,
                        [&](ipc::DirectBroker::Role role, std::uint32_t name, ipc::ObjectId port) {
                          return (role == ipc::DirectBroker::Role::kClient
                                      ? router_.SendRightTarget(job, name)
                                      : router_.ReceiveRightPort(job, name)) == port;
                        });
    RunDirect();
  }

  // Carries out what the broker asked for.
  void RunDirect() {
    auto actions = broker_.TakeActions();
    for (std::uint64_t connection : actions.closes) direct_connections_.erase(connection);
    for (const auto& revoke : actions.revokes) Revoke(revoke.job, revoke.inode);
    for (auto& reply : actions.replies) Reply(std::move(reply));
    ArmDirectTimer();
  }

  void Reply(ipc::DirectBroker::Reply reply) {
    const std::string& job = reply.job;
    UniqueFd fd;
    if (reply.connection != 0) {
      auto it = direct_connections_.find(reply.connection);
      if (it != direct_connections_.end()) {
        fd = std::move(it->second);
        direct_connections_.erase(it);
      }
    }
    auto it = channels_.find(job);
    if (it == channels_.end()) return;  // the connection closes with `fd`
    if (reply.status == ipc::JobStatus::kOk && !fd.valid()) {
      reply.status = ipc::JobStatus::kUnavailable;
      reply.why = "the direct connection was lost";
    }
    const std::string payload = ipc::EncodeJobReply(
        reply.request, reply.status, reply.status == ipc::JobStatus::kOk ? "" : reply.why);
    Channel::Chunk chunk;
    ipc::AppendFrameHeader(chunk.bytes, ipc::FrameType::kIpcReply,
                           static_cast<std::uint32_t>(payload.size()));
    chunk.bytes.append(payload);
    chunk.fd = std::move(fd);
    it->second->out.push_back(std::move(chunk));
    Flush(job, it->second);
  }

  void ArmDirectTimer() {
    const auto next = broker_.NextDeadline();
    if (stopped_ || !next || (direct_timer_at_ && *direct_timer_at_ <= *next)) return;
    direct_timer_at_ = *next;
    direct_timer_.expires_at(*next);
    direct_timer_.async_wait([self = shared_from_this()](const boost::system::error_code& error) {
      if (error == boost::asio::error::operation_aborted || self->stopped_) return;
      self->direct_timer_at_.reset();
      self->broker_.Tick(ipc::DirectBroker::Clock::now());
      self->RunDirect();
    });
  }

  // Shuts a job's direct connection end down through the job's own descriptor: both jobs then
  // read end-of-file. Not found: the job closed it already.
  void Revoke(const std::string& job, std::uint64_t inode) {
    const int init_pid = init_pid_ ? init_pid_(job) : 0;
    if (init_pid <= 0) {
      spdlog::debug("job {}: direct connection socket:[{}] not revoked: the job has no process",
                    job, inode);
      return;
    }
    const std::string target = "socket:[" + std::to_string(inode) + "]";
    for (const pid_t pid : migrate::NamespacePids(init_pid)) {
      const std::string dir = "/proc/" + std::to_string(pid) + "/fd";
      std::error_code error;
      for (const auto& entry : std::filesystem::directory_iterator(dir, error)) {
        std::error_code unreadable;
        if (std::filesystem::read_symlink(entry.path(), unreadable).string() != target) continue;
        const int number = std::atoi(entry.path().filename().c_str());
        UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
        UniqueFd socket(pidfd.valid()
                            ? static_cast<int>(::syscall(SYS_pidfd_getfd, pidfd.get(), number, 0))
                            : -1);
        if (!socket.valid()) {
          spdlog::warn("job {}: cannot revoke direct connection {}: {}", job, target,
                       std::strerror(errno));
          return;
        }
        ::shutdown(socket.get(), SHUT_RDWR);
        spdlog::debug("job {}: direct connection {} revoked", job, target);
        return;
      }
    }
    spdlog::debug("job {}: direct connection {} already closed", job, target);
  }

  boost::asio::io_context& io_;
  std::uint64_t self_;
  MemfdRegions regions_;
  ipc::PortRouter router_;
  NodeSender send_;
  TimerSchedule schedule_;
  boost::asio::steady_timer timer_{io_};
  std::map<std::string, std::shared_ptr<Channel>> channels_;
  // Replies smaller than this are gathered into one chunk; larger ones keep their own buffer.
  static constexpr std::size_t kGatherBelow = 16u << 10;
  static constexpr std::size_t kMaxUnreadReplyBytes = ipc::kMaxMessageBytes + (64u << 20);
  std::map<std::uint64_t, ipc::BlastOutbox> outboxes_;  // by node
  NodeBacklog backlog_;
  static constexpr auto kHoldCheck = std::chrono::milliseconds(1);
  boost::asio::steady_timer hold_timer_{io_};
  bool holding_ = false;
  static constexpr auto kMaxHold = std::chrono::seconds(2);
  std::chrono::steady_clock::time_point hold_started_;
  std::set<std::uint64_t> stuck_;  // links that did not drain within kMaxHold
  std::vector<std::pair<std::string, std::weak_ptr<Channel>>> held_;
  struct Assembly {
    std::uint32_t next = 0;
    std::string bytes;
  };
  std::map<std::pair<std::uint64_t, std::uint64_t>, Assembly> blasts_;
  bool stopped_ = false;
  bool run_scheduled_ = false;

  ipc::DirectBroker broker_;
  boost::asio::ip::tcp::acceptor acceptor_{io_};
  std::uint16_t direct_port_ = 0;
  static constexpr auto kTokenWait = std::chrono::seconds(2);
  // Direct connection ends made and not yet handed to a job (queued, or on their way).
  std::map<std::uint64_t, UniqueFd> direct_connections_;
  std::uint64_t next_connection_ = 1;
  boost::asio::steady_timer direct_timer_{io_};
  std::optional<ipc::DirectBroker::Clock::time_point> direct_timer_at_;
  NodeAddress node_address_;
  JobInitPid init_pid_;
};

ipc::PortRouter::Export IpcService::HandOff(const std::string& job, std::uint64_t to_node,
                                            int init_pid) {
  return impl_->HandOff(job, to_node, init_pid);
}

Expected<void> IpcService::TakeOver(const std::string& job, std::string_view state) {
  return impl_->TakeOver(job, state);
}

std::string IpcService::ChannelSocket(const std::string& job) const {
  auto it = impl_->channels_.find(job);
  return it == impl_->channels_.end() ? "" : it->second->job_end;
}

std::string IpcService::MoveBlocker(const std::string& job) const {
  return impl_->router_.MoveBlocker(job);
}

IpcService::IpcService(boost::asio::io_context& io, std::uint64_t node_id, NodeSender send,
                       NodeBacklog backlog)
    : impl_(std::make_shared<Impl>(io, node_id, std::move(send), std::move(backlog))) {
  impl_->AcceptDirect();
}

IpcService::~IpcService() { Stop(); }

int IpcService::OpenChannel(const std::string& job) { return impl_->Open(job); }

void IpcService::CloseChannel(const std::string& job) { impl_->Close(job); }

Expected<void> IpcService::OnNodeFrame(std::uint64_t from, ipc::FrameType type,
                                       std::string payload) {
  // A message's data stay in the frame that brought them (no copy on the way to the job).
  Expected<void> handled;
  if (type == ipc::FrameType::kIpcDirect) {
    return impl_->OnDirectFrame(from, payload);
  }
  if (type == ipc::FrameType::kIpcBlast) {
    handled = impl_->OnBlast(from, payload);
  } else if (type == ipc::FrameType::kIpcBlastAck) {
    if (ipc::IsBlastAck(payload)) {
      impl_->OnBlastAck(from);
    } else {
      handled = Fail("malformed IPC blast acknowledgement");
    }
  } else {
    handled =
        impl_->router_.NodeFrame(from, std::make_shared<const std::string>(std::move(payload)));
  }
  // Frames come in bursts (a link reads many at once): act once per burst, so that the
  // answers to a burst leave in one write to each job.
  impl_->ScheduleRun();
  return handled;
}

void IpcService::NodeUp(std::uint64_t node) { impl_->router_.NodeUp(node); }

void IpcService::NodeDown(std::uint64_t node) {
  std::erase_if(impl_->blasts_, [&](const auto& entry) { return entry.first.first == node; });
  impl_->outboxes_.erase(node);  // what waited for the link is lost with it: the router fails it
  impl_->stuck_.erase(node);
  impl_->router_.NodeDown(node);
  impl_->Run();
}

void IpcService::SetDirectHooks(NodeAddress node_address, JobInitPid init_pid) {
  impl_->node_address_ = std::move(node_address);
  impl_->init_pid_ = std::move(init_pid);
}

std::vector<std::string> IpcService::DirectSockets(const std::string& job) const {
  std::vector<std::string> sockets;
  for (const auto& record : impl_->broker_.Records(job)) {
    sockets.push_back("socket:[" + std::to_string(record.inode) + "]");
  }
  return sockets;
}

void IpcService::SuspendDirect(const std::string& job) {
  impl_->broker_.Suspend(job);
  impl_->RunDirect();
}

void IpcService::ResumeDirect(const std::string& job) { impl_->broker_.Resume(job); }

std::size_t IpcService::RightCount(const std::string& job) const {
  return impl_->router_.RightCount(job);
}

std::set<std::string> IpcService::JobsSharingRegions(const std::string& job) const {
  return impl_->router_.JobsSharingRegions(job);
}

void IpcService::Stop() {
  if (!impl_ || impl_->stopped_) return;
  impl_->stopped_ = true;
  impl_->timer_.cancel();
  impl_->hold_timer_.cancel();
  impl_->direct_timer_.cancel();
  boost::system::error_code not_open;
  impl_->acceptor_.close(not_open);
  impl_->direct_connections_.clear();
  for (auto& [job, channel] : impl_->channels_) {
    channel->closed = true;
    boost::system::error_code ignored;
    channel->socket.close(ignored);
  }
  impl_->channels_.clear();
}

}  // namespace tern::agent
