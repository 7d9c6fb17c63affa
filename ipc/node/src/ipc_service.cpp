#include "tern/ipc/node/ipc_service.hpp"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <cerrno>
#include <cstring>
#include <deque>
#include <filesystem>
#include <span>
#include <tern/fd_control.hpp>
#include <tern/ipc/blast_outbox.hpp>
#include <tern/ipc/frame.hpp>
#include <tern/ipc/job_attach.hpp>
#include <tern/ipc/job_secret.hpp>
#include <tern/ipc/job_wire.hpp>
#include <tern/ipc/node/timer_schedule.hpp>
#include <tern/ipc/peer_sequence.hpp>
#include <tern/ipc/port_router.hpp>
#include <tern/unique_fd.hpp>
#include <variant>

#include "backlog_hold.hpp"
#include "direct_calls.hpp"
#include "job_socket.hpp"
#include "memfd_regions.hpp"

namespace tern::ipc {

// The documented thresholds (IpcService) are the ones the hold applies.
static_assert(IpcService::kHoldAbove == BacklogHold::kHoldAbove);
static_assert(IpcService::kResumeBelow == BacklogHold::kResumeBelow);

class IpcService::Impl : public std::enable_shared_from_this<IpcService::Impl> {
 public:
  Impl(boost::asio::io_context& io, std::uint64_t node_id, NodeSender send, NodeBacklog backlog,
       const ipc::IpcLimits& limits)
      : io_(io),
        self_(node_id),
        router_(node_id, regions_, limits),
        send_(std::move(send)),
        // Frames held for a node wait as much as those its link has not written yet.
        hold_([this, backlog = std::move(backlog)](std::uint64_t node) {
          const auto held = sequenced_.find(node);
          return (backlog ? backlog(node) : 0) +
                 (held != sequenced_.end() && !held->second.up() ? held->second.held_bytes() : 0);
        }),
        direct_(std::make_shared<DirectCalls>(
            io, node_id, router_, send_,
            [this](const std::string& job, std::string_view reply, UniqueFd fd) {
              QueueDirectReply(job, reply, std::move(fd));
            })) {}
  // The direct calls' handlers call back into this object: none may run once it is gone.
  ~Impl() { direct_->Stop(); }

  // This run's epochs (one per peer: this value ^ its id): a restarted agent's numbering is new.
  static std::uint64_t RandomEpoch() {
    std::uint64_t value = 0;
    if (::getrandom(&value, sizeof value, 0) != static_cast<ssize_t>(sizeof value)) {
      value =
          static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
    }
    return value;
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
    // After a re-attach, the process that attached: its fd 3 is the channel (the job's init
    // still holds the old one).
    int holder_pid = 0;
    // Opened for a move: the hello waits for TakeOver (or the job's first request, when the
    // source handed nothing over), so that it never lands inside an answer the job was reading.
    bool hello_held = false;
  };

  int Open(const std::string& job, bool hello) {
    const int end = MakeChannel(job, std::nullopt);
    if (end >= 0) {
      NewSecret(job);
      if (hello) {
        SayHello(job);
      } else {
        channels_[job]->hello_held = true;
      }
    }
    return end;
  }

  // A socket pair whose other end becomes the job's channel; `first_name` set: the job
  // re-attached (PortRouter::JobReattached). Returns the job's end, or -1.
  int MakeChannel(const std::string& job, std::optional<std::uint32_t> first_name) {
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
    if (first_name) {
      router_.JobReattached(job, uid_of_ ? uid_of_(job) : std::nullopt, *first_name);
    } else {
      router_.JobAttached(job, uid_of_ ? uid_of_(job) : std::nullopt);
    }
    Read(job, channel);
    return fds[1];
  }

  // ---- re-attaching (docs/ipc.md "A channel the job reconnects")

  Expected<void> ListenForJobs(const std::string& dir, std::string cluster_key) {
    cluster_key_ = std::move(cluster_key);
    std::error_code error;
    std::filesystem::create_directories(dir + "/secrets", error);
    if (error) return Fail("cannot create " + dir + "/secrets: " + error.message());
    ::chmod(dir.c_str(), 0755);
    // Only the agent reads the secrets.
    if (::chmod((dir + "/secrets").c_str(), 0700) != 0) {
      return Fail("cannot restrict " + dir + "/secrets: " + std::strerror(errno));
    }
    secrets_dir_ = dir + "/secrets";
    // Before anyone is answered: jobs re-attach through the socket below, peers come later.
    RestoreState(dir);
    job_socket_ =
        std::make_shared<JobSocket>(io_, [this](const AttachRequest& request, int peer_pid) {
          return DecideAttach(request, peer_pid);
        });
    return job_socket_->Listen(dir + "/jobs.sock");
  }

  std::string SecretPath(const std::string& job) const { return secrets_dir_ + "/" + job; }

  // ---- durable state (docs/ipc.md "Port homes that survive their agent")

  static std::string ReadWhole(const std::string& path) {
    std::string bytes;
    UniqueFd file(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
    if (!file.valid()) return bytes;
    char buffer[1 << 16];
    for (;;) {
      const ssize_t got = ::read(file.get(), buffer, sizeof buffer);
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) return bytes;
      bytes.append(buffer, static_cast<std::size_t>(got));
    }
  }

  // What the previous agent of this node recorded, put back into the (empty) router; then the
  // journal starts afresh from it.
  void RestoreState(const std::string& dir) {
    state_dir_ = dir;
    const std::string journal_path = dir + "/journal";
    auto restored = router_.RestoreDurable(ReadWhole(journal_path));
    if (!restored) {
      // Kept aside for a person to look at; this agent starts with nothing, as before.
      spdlog::error("IPC: the state kept in {} cannot be restored: {}; starting without it",
                    journal_path, restored.error().message);
      std::error_code ignored;
      std::filesystem::rename(journal_path, journal_path + ".bad", ignored);
    } else {
      if (restored->dropped_tail > 0) {
        spdlog::warn("IPC: {} bytes at the end of {} were a record cut short (dropped)",
                     restored->dropped_tail, journal_path);
      }
      if (restored->ports > 0 || !restored->jobs.empty()) {
        spdlog::info(
            "IPC: restored {} port(s) with {} queued message(s), and the rights of {} "
            "job(s), from {}",
            restored->ports, restored->messages, restored->jobs.size(), dir);
      }
      restored_jobs_.insert(restored->jobs.begin(), restored->jobs.end());
      // What the previous agent sent and was not acknowledged goes again when the links are up.
      for (const auto& [node, list] : restored->unacked) {
        std::vector<std::pair<SequenceTag, SequencedOutbox::Payload>> kept;
        for (const auto& sent : list) kept.emplace_back(sent.tag, sent.payload);
        sequenced_.try_emplace(node, epoch_base_ ^ node, kMaxHeldBytes, kept);
        outboxes_.try_emplace(node, ipc::FrameType::kIpcSequenced);
        spdlog::info(
            "IPC: {} frame(s) to node {:016x} not acknowledged before the restart: sent "
            "again when its link is up",
            list.size(), node);
      }
    }
    router_.KeepDurableState();
    WriteDurable(router_.TakeDurable());
    for (const auto& [node, sequence] : sequenced_) {
      if (sequence.held() > 0) Held(node);
    }
  }

  // Writes every piece, several per call; false on an error (errno set).
  static bool WritePieces(int fd, const std::vector<std::string>& pieces) {
    constexpr std::size_t kMaxIov = 256;
    std::size_t index = 0;
    std::size_t offset = 0;  // into pieces[index]
    while (index < pieces.size()) {
      iovec iov[kMaxIov];
      std::size_t count = 0;
      for (std::size_t i = index; i < pieces.size() && count < kMaxIov; ++i) {
        const std::size_t skip = i == index ? offset : 0;
        if (pieces[i].size() == skip) continue;
        iov[count++] = {const_cast<char*>(pieces[i].data()) + skip, pieces[i].size() - skip};
      }
      if (count == 0) return true;
      const ssize_t put = ::writev(fd, iov, static_cast<int>(count));
      if (put < 0 && errno == EINTR) continue;
      if (put < 0) return false;
      auto written = static_cast<std::size_t>(put);
      while (index < pieces.size() && written >= pieces[index].size() - offset) {
        written -= pieces[index].size() - offset;
        offset = 0;
        ++index;
      }
      offset += written;
    }
    return true;
  }

  // Writes `pieces` to `path` aside and renames it into place; the open file, or invalid.
  static UniqueFd WriteAside(const std::string& path, const std::vector<std::string>& pieces) {
    const std::string temporary = path + ".new";
    UniqueFd file(
        ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600));
    if (!file.valid() || !WritePieces(file.get(), pieces) ||
        ::rename(temporary.c_str(), path.c_str()) != 0) {
      return UniqueFd();
    }
    return file;
  }

  // Makes a turn's changes durable, before its actions are carried out: one append (a
  // rewrite, aside and renamed, only at the start and when the journal has grown well past what
  // it holds). The run directory is tmpfs: no fsync (the machine's end ends the jobs too).
  void WriteDurable(ipc::PortRouter::DurableWrite write) {
    if (state_dir_.empty() || write.empty()) return;
    bool ok = true;
    if (write.rewrite_journal) {
      journal_fd_ = WriteAside(state_dir_ + "/journal", write.journal);
      ok = journal_fd_.valid();
    } else {
      ok = journal_fd_.valid() && WritePieces(journal_fd_.get(), write.journal);
    }
    if (!ok) {
      // Written whole at the next turn; until then a restart loses this turn.
      if (!durable_failing_) {
        spdlog::error(
            "IPC: cannot keep the IPC state in {}/journal: {}; a restart of this "
            "agent would lose it",
            state_dir_, std::strerror(errno));
      }
      durable_failing_ = true;
      journal_fd_.Reset();
      router_.KeepDurableState();
      return;
    }
    if (durable_failing_) spdlog::info("IPC: the IPC state in {} is kept again", state_dir_);
    durable_failing_ = false;
  }

  // A job restored from the files that ends or leaves without re-attaching: its rights are
  // released at their homes as any ending job's are.
  void DropRestored(const std::string& job) {
    if (restored_jobs_.erase(job) == 0 || channels_.contains(job)) return;
    router_.JobGone(job);
    Run();
  }

  // The job's secret for its new channel (the same on every node when the cluster secret is
  // known: JobSecret), kept where a restarted agent finds it.
  void NewSecret(const std::string& job) {
    if (secrets_dir_.empty() || job.empty() || job.find('/') != std::string::npos) return;
    std::string secret = JobSecret(cluster_key_, job);
    const bool derived = !secret.empty();
    if (!derived) secret.assign(kJobSecretSize, '\0');
    if (!derived &&
        ::getrandom(secret.data(), secret.size(), 0) != static_cast<ssize_t>(secret.size())) {
      spdlog::error("job {}: no secret for its IPC channel: getrandom: {}", job,
                    std::strerror(errno));
      return;
    }
    const std::string path = SecretPath(job);
    const std::string temporary = path + ".new";
    UniqueFd file(
        ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600));
    if (!file.valid() ||
        ::write(file.get(), secret.data(), secret.size()) != static_cast<ssize_t>(secret.size()) ||
        ::rename(temporary.c_str(), path.c_str()) != 0) {
      spdlog::error("job {}: cannot keep its IPC channel's secret at {}: {}", job, path,
                    std::strerror(errno));
      return;
    }
    secrets_[job] = std::move(secret);
  }

  std::optional<std::string> Secret(const std::string& job) {
    if (auto it = secrets_.find(job); it != secrets_.end()) return it->second;
    if (secrets_dir_.empty()) return std::nullopt;
    UniqueFd file(::open(SecretPath(job).c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
    if (!file.valid()) return std::nullopt;
    std::string secret(kJobSecretSize + 1, '\0');
    const ssize_t got = ::read(file.get(), secret.data(), secret.size());
    if (got != static_cast<ssize_t>(kJobSecretSize)) return std::nullopt;
    secret.resize(kJobSecretSize);
    secrets_[job] = secret;
    return secret;
  }

  void ForgetSecret(const std::string& job) {
    secrets_.erase(job);
    if (secrets_dir_.empty() || job.empty() || job.find('/') != std::string::npos) return;
    std::error_code ignored;
    std::filesystem::remove(SecretPath(job), ignored);
  }

  // The first frame of every channel the job gets from this agent: how to find it again.
  void SayHello(const std::string& job) {
    auto it = channels_.find(job);
    if (it != channels_.end()) it->second->hello_held = false;
    auto secret = Secret(job);
    if (it == channels_.end() || !secret || !job_socket_ || job_socket_->path().empty()) return;
    Channel::Chunk chunk;
    AppendFrame(chunk.bytes, FrameType::kIpcHello,
                EncodeChannelHello({job, *secret, job_socket_->path()}));
    it->second->out.push_back(std::move(chunk));
    Flush(job, it->second);
  }

  // Whether `pid` is `ancestor` or descends from it (its parents, read from /proc).
  static bool DescendsFrom(int pid, int ancestor) {
    for (int step = 0; step < 64 && pid > 1; ++step) {
      if (pid == ancestor) return true;
      UniqueFd stat(
          ::open(("/proc/" + std::to_string(pid) + "/stat").c_str(), O_RDONLY | O_CLOEXEC));
      if (!stat.valid()) return false;
      char buffer[1024];
      const ssize_t got = ::read(stat.get(), buffer, sizeof buffer - 1);
      if (got <= 0) return false;
      const std::string_view text(buffer, static_cast<std::size_t>(got));
      // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
      const auto close = text.rfind(')');
      if (close == std::string_view::npos || close + 4 >= text.size()) return false;
      const std::string rest(text.substr(close + 4));
      pid = std::atoi(rest.c_str());
    }
    return pid == ancestor;
  }

  std::variant<JobSocket::Accepted, std::string> DecideAttach(const AttachRequest& request,
                                                              int peer_pid) {
    AttachFacts facts;
    const int init = init_pid_ ? init_pid_(request.job) : 0;
    facts.job_running_here = init > 0;
    if (facts.job_running_here) {
      facts.secret = Secret(request.job);
      facts.peer_in_job = DescendsFrom(peer_pid, init);
    }
    if (auto refused = RefuseAttach(request, facts)) return *refused;
    if (channels_.contains(request.job)) {
      // This agent still holds a channel to the job (its libtern should not have lost it).
      return "job " + request.job + " has an open IPC channel here already";
    }
    // Names far from those the job used before (they start at 1), different each time.
    std::uint32_t base = 0;
    (void)::getrandom(&base, sizeof base, 0);
    const std::uint32_t first_name = 0x40000000u | (base & 0x3fff0000u);
    // Rights this agent's files hold for the job (docs/ipc.md "Port homes that survive their
    // agent"): its own record, given back under the job's names.
    const bool kept = restored_jobs_.erase(request.job) > 0 && router_.RightCount(request.job) > 0;
    const int end =
        MakeChannel(request.job, kept ? std::nullopt : std::optional<std::uint32_t>(first_name));
    if (end < 0) return "job " + request.job + ": no new IPC channel could be made";
    channels_[request.job]->holder_pid = peer_pid;
    JobSocket::Accepted accepted{UniqueFd(end), false, kept};
    if (auto pending = pending_states_.find(request.job);
        kept && pending != pending_states_.end()) {
      // The files are this agent's later record of the same rights (it installed the hand-off
      // before it died): the hand-off is dropped, releasing nothing.
      spdlog::info(
          "job {}: its rights from this agent's files stand; the move's hand-off is "
          "dropped",
          request.job);
      pending_states_.erase(pending);
    } else if (pending != pending_states_.end()) {
      // A hand-off this agent could not install before its restart (the job's channel had
      // died with the killed agent): the source's record of the job's rights, never the job's.
      const std::string state = std::move(pending->second);
      pending_states_.erase(pending);
      router_.JobGone(request.job);  // JobReattached's empty table: ImportJob takes it whole
      router_.JobAttached(request.job, uid_of_ ? uid_of_(request.job) : std::nullopt);
      if (auto taken = TakeOver(request.job, state); !taken) {
        spdlog::error("job {}: its IPC state from the move is lost: {}", request.job,
                      taken.error().message);
        router_.JobReattached(request.job, uid_of_ ? uid_of_(request.job) : std::nullopt,
                              first_name);
      } else {
        accepted.restored = true;
      }
    }
    spdlog::info("job {}: IPC channel re-attached (pid {}); {}", request.job, peer_pid,
                 accepted.restored ? "its rights from the move restored"
                 : kept            ? "its rights kept in this agent's files given back"
                                   : "it holds no rights from before");
    if (!accepted.restored) SayHello(request.job);  // TakeOver says it otherwise
    return accepted;
  }

  // A job that ends or leaves with a hand-off never installed: its rights are released at
  // their homes as a job's are when it ends.
  void DropPending(const std::string& job) {
    auto pending = pending_states_.find(job);
    if (pending == pending_states_.end()) return;
    const std::string state = std::move(pending->second);
    pending_states_.erase(pending);
    ipc::WireReader in(state);
    auto rights = in.Bytes();
    if (!rights || channels_.contains(job)) return;
    router_.JobAttached(job);
    if (auto imported = router_.ImportJob(job, *rights); !imported) {
      spdlog::warn("job {}: its IPC state from the move cannot be released: {}", job,
                   imported.error().message);
    }
    router_.JobGone(job);
    Run();
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
    direct_->JobGone(job);
    Run();
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
    if (hold_.holding()) return Hold(job, channel);
    if (channel->hello_held) SayHello(job);  // it runs: nothing from the source is to come
    if (!Consume(job, channel)) return;
    Run();
    if (channel->closed) return;
    direct_->CheckDirectRights(job);
    if (channel->closed) return;
    if (hold_.HoldNow(KeysOf(outboxes_), std::chrono::steady_clock::now())) {
      spdlog::debug("IPC: holding jobs' requests back: a link to another node is backlogged");
      Hold(job, channel);
      return CheckHold();
    }
    Read(job, channel);
  }

  // The channel is read again once the hold ends (checked each kHoldCheck).
  void Hold(const std::string& job, const std::shared_ptr<Channel>& channel) {
    held_.emplace_back(job, channel);
  }

  void CheckHold() {
    hold_timer_.expires_after(kHoldCheck);
    hold_timer_.async_wait([self = shared_from_this()](const boost::system::error_code& error) {
      if (error || self->stopped_) return;
      const auto verdict =
          self->hold_.Check(KeysOf(self->outboxes_), std::chrono::steady_clock::now());
      for (const std::uint64_t node : verdict.newly_stuck) {
        spdlog::warn(
            "IPC: the link to node {:016x} has not drained for {} s; no longer holding jobs "
            "back for it",
            node, std::chrono::duration_cast<std::chrono::seconds>(BacklogHold::kMaxHold).count());
      }
      if (!verdict.resume) return self->CheckHold();
      for (auto& [job, weak] : std::exchange(self->held_, {})) {
        if (auto channel = weak.lock(); channel && !channel->closed) self->Read(job, channel);
      }
    });
  }

  // Reads what the job wrote and hands every complete request to the router; false when the
  // channel was closed (end of file, or a broken protocol).
  // A job attached before the agent knew its user (a restored one) gets it before its first
  // request runs: names are owned by users.
  void LearnUid(const std::string& job) {
    if (router_.JobUid(job) || !uid_of_) return;
    if (auto uid = uid_of_(job)) router_.SetJobUid(job, *uid);
  }

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
    LearnUid(job);
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
          direct_->OnJobRequest(job, request, op, header.rest());
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
    auto job_end = JobEnd(channel->holder_pid > 0 ? channel->holder_pid : init_pid);
    if (!job_end) return {ipc::PortRouter::ExportOutcome::kRefused, job_end.error().message};
    auto exported = router_.ExportJob(job, to_node);
    Run();  // frames the export asked for, and nothing for the job any more
    if (exported.outcome != ipc::PortRouter::ExportOutcome::kExported) return exported;
    // Accepts still waiting are answered now, so that the answers travel with the job.
    direct_->Leaving(job);
    // What the job has not read: first what waits in its socket, then what we did not write.
    std::string to_job = PeekUnread(job_end->get());
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
    // The secret stays: a move that then aborts (this agent killed during it, say) resumes the
    // job here, and it re-attaches. CloseChannel forgets it when the job has left for good.
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
    UniqueFd end(static_cast<int>(::syscall(SYS_pidfd_getfd, pidfd.get(), kJobIpcFd, 0)));
    if (!end.valid()) {
      return Fail(std::string("cannot reach the job's IPC channel: pidfd_getfd: ") +
                  std::strerror(errno));
    }
    return end;
  }

  // Everything queued in the job's end that it has not read yet (it is frozen: nothing more
  // arrives but what we write, and we write nothing now). Read without taking it: if this agent
  // dies before the move's commit record is written, the job resumes here and reads it itself.
  static std::string PeekUnread(int job_end) {
    int queued = 0;
    if (::ioctl(job_end, FIONREAD, &queued) != 0 || queued <= 0) return {};
    std::string bytes(static_cast<std::size_t>(queued), '\0');
    for (;;) {
      const ssize_t got = ::recv(job_end, bytes.data(), bytes.size(), MSG_PEEK | MSG_DONTWAIT);
      if (got < 0 && errno == EINTR) continue;
      bytes.resize(got > 0 ? static_cast<std::size_t>(got) : 0);
      return bytes;
    }
  }

  Expected<void> TakeOver(const std::string& job, std::string_view state) {
    if (state.empty()) return {};  // its held hello goes at its first request (OnReadable)
    ipc::WireReader in(state);
    auto rights = in.Bytes();
    auto to_job = in.Bytes();
    auto from_job = in.Bytes();
    if (!from_job || !in.AtEnd()) return Fail("malformed IPC hand-off for job " + job);
    auto it = channels_.find(job);
    if (it == channels_.end()) {
      if (!job_socket_) return Fail("job " + job + " has no IPC channel here");
      // Its channel died with this agent's previous process: installed when the job
      // re-attaches (docs/ipc.md "A channel the job reconnects").
      pending_states_[job] = std::string(state);
      spdlog::info("job {}: its IPC state waits for the job to re-attach its channel", job);
      return {};
    }
    auto channel = it->second;
    if (auto imported = router_.ImportJob(job, *rights); !imported) return imported;
    LearnUid(job);
    if (!from_job->empty()) {
      if (auto fed = channel->decoder.Feed(*from_job); !fed) return fed;
    }
    if (!to_job->empty()) {
      Channel::Chunk chunk;
      chunk.bytes = std::move(*to_job);
      channel->out.push_front(std::move(chunk));
    }
    // Again after the answers it had not read on the source, which may hold the source's
    // hello: the last hello the job reads is this node's.
    SayHello(job);
    Run();
    Flush(job, channel);
    return {};
  }

  // Carries out what the router asked for.
  void Run() {
    auto actions = router_.TakeActions();
    // The frames to other agents, numbered in the router's order (so each node's in order) and
    // in the journal with the turn. The frames for one node leave in one write (a call's
    // deferred ok and its reply, say), through its outbox: a large payload goes as a blast, and
    // what follows waits for it. A node without a link now gets them when it is back.
    std::map<std::uint64_t, std::vector<ipc::Frame>> batches;
    std::vector<std::uint64_t> held;  // nodes given frames while they cannot be reached
    for (auto& frame : actions.frames) {
      auto& sequence = SequenceTo(frame.node);
      const auto kept = Number(frame.node, std::move(frame.payload));
      if (sequence.up()) {
        outboxes_.at(frame.node).Add(*kept, batches[frame.node]);
      } else if (std::find(held.begin(), held.end(), frame.node) == held.end()) {
        held.push_back(frame.node);
      }
    }
    // Recorded before anything of this turn is acknowledged (a reply, a result to a peer).
    WriteDurable(router_.TakeDurable());
    // What this turn handled of each peer's frames is in the journal now: acknowledged, in the
    // same write as the turn's frames to it.
    for (std::uint64_t node : std::exchange(acks_due_, {})) {
      auto inbox = inboxes_.find(node);
      if (inbox == inboxes_.end() || !inbox->second.delivered()) continue;
      batches[node].push_back(
          {ipc::FrameType::kIpcSequenceAck, ipc::EncodeSequenceAck(*inbox->second.delivered())});
    }
    // Before the replies: writing those may close a channel, whose turn (Close runs one) must
    // not number frames after these and send them first (the peer would drop them as a gap).
    for (auto& [node, batch] : batches) SendBatch(node, batch);
    for (std::uint64_t node : held) Held(node);
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

  // ---- frames to other agents (docs/ipc.md "Sends that wait for their home")

  SequencedOutbox& SequenceTo(std::uint64_t node) {
    auto it = sequenced_.find(node);
    if (it == sequenced_.end()) {
      it = sequenced_.try_emplace(node, epoch_base_ ^ node, kMaxHeldBytes).first;
      outboxes_.try_emplace(node, ipc::FrameType::kIpcSequenced);
    }
    return it->second;
  }

  // A payload of the router's for `node`, numbered and recorded in the journal (with the turn,
  // before it leaves); returns it as it leaves.
  SequencedOutbox::Payload Number(std::uint64_t node, std::string payload) {
    auto added = SequenceTo(node).Add(std::move(payload));
    router_.JournalSent(node, added.tag, added.payload);
    return std::move(added.payload);
  }

  // Something waits for `node`'s link: ask the cluster for one now and then, give the node
  // up when it stays away (or when too much waits for it).
  void Held(std::uint64_t node) {
    auto& sequence = SequenceTo(node);
    const auto now = std::chrono::steady_clock::now();
    if (sequence.full() || sequence.GiveUpDue(now)) return GiveUpOn(node);
    if (sequence.ProbeDue(now)) {
      // Any frame makes the cluster dial the node; an acknowledgement is one that changes
      // nothing at the other end.
      auto inbox = inboxes_.find(node);
      const SequenceTag tag = inbox != inboxes_.end()
                                  ? inbox->second.delivered().value_or(SequenceTag{})
                                  : SequenceTag{};
      std::vector<ipc::Frame> probe;
      probe.push_back({ipc::FrameType::kIpcSequenceAck, ipc::EncodeSequenceAck(tag)});
      send_(node, std::move(probe));
    }
    ArmProbe();
  }

  void GiveUpOn(std::uint64_t node) {
    auto& sequence = SequenceTo(node);
    const std::size_t bytes = sequence.held_bytes();
    const bool full = sequence.full();
    router_.JournalAcked(node, {sequence.epoch(), ~std::uint64_t{0}});  // dropped for good
    const std::size_t dropped = sequence.GiveUp();
    outboxes_.at(node).Reset();
    spdlog::warn(
        "IPC: giving node {:016x} up: {} frame(s) ({} bytes) held for it dropped, its "
        "operations fail ({})",
        node, dropped, bytes,
        full ? "too much held"
             : "no link to it for " + std::to_string(SequencedOutbox::kGiveUpAfter.count()) + " s");
    router_.NodeDown(node);
    ScheduleRun();
  }

  void SendBatch(std::uint64_t node, std::vector<ipc::Frame>& batch) {
    if (batch.empty()) return;
    if (!send_(node, std::move(batch))) {
      // No link the cluster can give now: what was not acknowledged goes again with the link.
      LinkDown(node);
    }
    batch.clear();
  }

  void LinkDown(std::uint64_t node) {
    std::erase_if(blasts_, [&](const auto& entry) { return entry.first.first == node; });
    hold_.LinkClosed(node);
    auto& sequence = SequenceTo(node);
    const bool was_up = sequence.up();
    sequence.LinkDown(std::chrono::steady_clock::now());
    outboxes_.at(node).Reset();
    if (was_up) {
      router_.NodeUnreachable(node);
      ScheduleRun();
    }
    if (sequence.held() > 0) Held(node);
  }

  // While a node's frames are held: one check a second (probe, or give up).
  void ArmProbe() {
    if (probe_armed_ || stopped_) return;
    probe_armed_ = true;
    probe_timer_.expires_after(SequencedOutbox::kProbeEvery);
    probe_timer_.async_wait([self = shared_from_this()](const boost::system::error_code& error) {
      self->probe_armed_ = false;
      if (error || self->stopped_) return;
      std::vector<std::uint64_t> waiting;
      for (const auto& [node, sequence] : self->sequenced_) {
        if (!sequence.up() && sequence.held() > 0) waiting.push_back(node);
      }
      for (std::uint64_t node : waiting) self->Held(node);
      self->Run();
    });
  }

  // A frame came from `node`: the link is up, whatever this side heard (a link the cluster closed
  // as idle and opened again says nothing).
  void HeardFrom(std::uint64_t node) {
    auto it = sequenced_.find(node);
    if (it != sequenced_.end() && !it->second.up()) OnNodeUp(node);
  }

  void OnNodeUp(std::uint64_t node) {
    router_.NodeUp(node);
    auto& sequence = SequenceTo(node);
    auto& outbox = outboxes_.at(node);
    outbox.Reset();
    // The first frame of this agent's own to the node: "I started afresh" (an empty envelope),
    // numbered after those sent again from the journal, so that it comes after their answers.
    if (announced_.insert(node).second) Number(node, std::string());
    std::vector<SequencedOutbox::Payload> again;
    sequence.LinkUp(again);
    if (!again.empty()) {
      spdlog::info("IPC: {} frame(s) held for node {:016x} sent now that its link is up",
                   again.size(), node);
    }
    std::vector<ipc::Frame> batch;
    for (auto& payload : again) outbox.Add(*payload, batch);
    SendBatch(node, batch);
    Run();
  }

  // A sequenced payload from `from`: run once, in order; acknowledged after the turn that ran it
  // is in the journal (Run).
  Expected<void> OnSequenced(std::uint64_t from, std::string payload) {
    const auto tag = ReadSequenceTrailer(payload);
    if (!tag) return Fail("malformed sequenced IPC frame");
    payload.resize(payload.size() - kSequenceTrailerBytes);
    auto inbox = inboxes_.find(from);
    if (inbox == inboxes_.end()) {
      const auto known = router_.PeerDeliveries();
      const auto found = known.find(from);
      inbox =
          inboxes_
              .try_emplace(from, found == known.end() ? std::nullopt
                                                      : std::optional<SequenceTag>(found->second))
              .first;
    }
    switch (inbox->second.Take(*tag)) {
      case SequencedInbox::Verdict::kDeliver:
        acks_due_.insert(from);
        router_.PeerDelivered(from, *tag);
        if (payload.empty()) {
          router_.PeerRestarted(from, SequenceTo(from).Unacked());
          return {};
        }
        return router_.NodeFrame(from, std::make_shared<const std::string>(std::move(payload)));
      case SequencedInbox::Verdict::kDuplicate:
        acks_due_.insert(from);  // it has not heard: say it again
        return {};
      case SequencedInbox::Verdict::kGap:
        spdlog::debug("IPC: frame {} of node {:016x} dropped: an earlier one is missing", tag->seq,
                      from);
        return {};
    }
    return {};
  }

  void OnSequenceAck(std::uint64_t from, SequenceTag tag) {
    if (tag.seq == 0) {
      // A probe: its sender holds frames for this node and waits for a link. Answered with
      // what this node has of it (never with a probe: two would answer each other forever).
      auto inbox = inboxes_.find(from);
      if (inbox != inboxes_.end() && inbox->second.delivered()) acks_due_.insert(from);
      return;
    }
    auto it = sequenced_.find(from);
    if (it == sequenced_.end()) return;
    it->second.Acked(tag);
    router_.JournalAcked(from, tag);
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
    std::string message = std::move(assembly.bytes);
    blasts_.erase({from, chunk->blast});
    return OnSequenced(from, std::move(message));
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
      auto& first = channel->out.front();
      const bool with_fd = first.fd.valid() && first.offset == 0;
      FdControl control(first.fd.get());
      if (with_fd) control.AttachTo(message);
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

  // A direct call's answer: a chunk of its own, so that the connection's fd (if any) goes with
  // the frame's first byte. Without a channel the answer is dropped and `fd` closes.
  void QueueDirectReply(const std::string& job, std::string_view reply, UniqueFd fd) {
    auto it = channels_.find(job);
    if (it == channels_.end()) return;
    Channel::Chunk chunk;
    ipc::AppendFrameHeader(chunk.bytes, ipc::FrameType::kIpcReply,
                           static_cast<std::uint32_t>(reply.size()));
    chunk.bytes.append(reply);
    chunk.fd = std::move(fd);
    it->second->out.push_back(std::move(chunk));
    Flush(job, it->second);
  }

  boost::asio::io_context& io_;
  std::uint64_t self_;
  MemfdRegions regions_;
  JobUid uid_of_;
  ipc::PortRouter router_;
  NodeSender send_;
  TimerSchedule schedule_;
  boost::asio::steady_timer timer_{io_};
  std::map<std::string, std::shared_ptr<Channel>> channels_;
  // Replies smaller than this are gathered into one chunk; larger ones keep their own buffer.
  static constexpr std::size_t kGatherBelow = 16u << 10;
  static constexpr std::size_t kMaxUnreadReplyBytes = ipc::kMaxMessageBytes + (64u << 20);
  std::map<std::uint64_t, ipc::BlastOutbox> outboxes_;  // by node (with sequenced_)
  BacklogHold hold_;
  static constexpr auto kHoldCheck = std::chrono::milliseconds(1);
  boost::asio::steady_timer hold_timer_{io_};
  std::vector<std::pair<std::string, std::weak_ptr<Channel>>> held_;
  struct Assembly {
    std::uint32_t next = 0;
    std::string bytes;
  };
  std::map<std::pair<std::uint64_t, std::uint64_t>, Assembly> blasts_;
  bool stopped_ = false;
  bool run_scheduled_ = false;
  // Re-attaching: the job socket, the secrets' directory, each job's secret once read.
  std::shared_ptr<JobSocket> job_socket_;
  std::string secrets_dir_;
  std::string cluster_key_;  // JobSecret's key: the cluster secret ("" in tests: random secrets)
  std::map<std::string, std::string> secrets_;
  JobInitPid init_pid_;
  // Hand-offs to install when their job re-attaches (TakeOver without a channel).
  std::map<std::string, std::string> pending_states_;
  // The durable state's directory ("" until ListenForJobs), the journal open for appending,
  // whether the last write failed, and the jobs restored from the files that have not
  // re-attached yet.
  std::string state_dir_;
  UniqueFd journal_fd_;
  // Frames to other agents, numbered per node (SequencedOutbox): held while a node cannot be
  // reached, sent again when its link is back; those from other agents, run once
  // (SequencedInbox), and the nodes whose acknowledgement is due at the end of the turn.
  // Held frames count in the backlog that holds the jobs back (hold_); past kMaxHeldBytes for one
  // node, it is given up.
  static constexpr std::size_t kMaxHeldBytes = std::size_t{64} << 20;
  const std::uint64_t epoch_base_ = RandomEpoch();
  std::map<std::uint64_t, SequencedOutbox> sequenced_;
  std::map<std::uint64_t, SequencedInbox> inboxes_;
  std::set<std::uint64_t> acks_due_;
  std::set<std::uint64_t> announced_;  // nodes told this agent started afresh
  boost::asio::steady_timer probe_timer_{io_};
  bool probe_armed_ = false;
  bool durable_failing_ = false;
  std::set<std::string> restored_jobs_;

  // After router_: it reads the router's rights.
  std::shared_ptr<DirectCalls> direct_;
};

ipc::PortRouter::Export IpcService::HandOff(const std::string& job, std::uint64_t to_node,
                                            int init_pid) {
  return impl_->HandOff(job, to_node, init_pid);
}

void IpcService::SettleHandOff(const std::string& job) {
  impl_->router_.SettleExport(job);
  impl_->Run();
}

void IpcService::ForgetMovedJob(const std::string& job) {
  impl_->router_.ForgetMovedJob(job);
  impl_->restored_jobs_.erase(job);
  impl_->Run();
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
                       NodeBacklog backlog, const ipc::IpcLimits& limits)
    : impl_(std::make_shared<Impl>(io, node_id, std::move(send), std::move(backlog), limits)) {
  impl_->direct_->Start();
}

IpcService::~IpcService() { Stop(); }

int IpcService::OpenChannel(const std::string& job) { return impl_->Open(job, /*hello=*/true); }
int IpcService::OpenChannelForMove(const std::string& job) {
  return impl_->Open(job, /*hello=*/false);
}

void IpcService::CloseChannel(const std::string& job) {
  impl_->Close(job);
  impl_->DropPending(job);
  impl_->DropRestored(job);
  impl_->ForgetSecret(job);
}

Expected<void> IpcService::ListenForJobs(const std::string& dir, std::string cluster_key) {
  return impl_->ListenForJobs(dir, std::move(cluster_key));
}

void IpcService::SetJobUidSource(JobUid uid_of) { impl_->uid_of_ = std::move(uid_of); }

Expected<void> IpcService::OnNodeFrame(std::uint64_t from, ipc::FrameType type,
                                       std::string payload) {
  // A message's data stay in the frame that brought them (no copy on the way to the job).
  Expected<void> handled;
  if (type == ipc::FrameType::kIpcDirect) {
    return impl_->direct_->OnDirectFrame(from, payload);
  }
  impl_->HeardFrom(from);
  if (type == ipc::FrameType::kIpcSequenced) {
    handled = impl_->OnSequenced(from, std::move(payload));
  } else if (type == ipc::FrameType::kIpcSequenceAck) {
    if (auto tag = ipc::ParseSequenceAck(payload)) {
      impl_->OnSequenceAck(from, *tag);
    } else {
      handled = Fail("malformed IPC sequence acknowledgement");
    }
  } else if (type == ipc::FrameType::kIpcBlast) {
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

void IpcService::NodeUp(std::uint64_t node) { impl_->OnNodeUp(node); }

void IpcService::NodeDown(std::uint64_t node) {
  // Held, not failed: a node that only lost its link (cut, its agent restarting) gets them when
  // it is back; SequencedOutbox::kGiveUpAfter without a link fails them.
  impl_->LinkDown(node);
  impl_->Run();
}

void IpcService::SetDirectHooks(NodeAddress node_address, JobInitPid init_pid) {
  impl_->init_pid_ = init_pid;
  impl_->direct_->SetHooks(std::move(node_address), std::move(init_pid));
}

std::vector<std::string> IpcService::DirectSockets(const std::string& job) const {
  return impl_->direct_->Sockets(job);
}

void IpcService::SuspendDirect(const std::string& job) { impl_->direct_->Suspend(job); }

void IpcService::ResumeDirect(const std::string& job) { impl_->direct_->Resume(job); }

std::size_t IpcService::RightCount(const std::string& job) const {
  return impl_->router_.RightCount(job);
}

void IpcService::SampleTraffic(std::chrono::steady_clock::time_point now) {
  const auto traffic = impl_->router_.TakeTraffic();
  for (const auto& pair : traffic) local_bytes_total_ += pair.bytes;
  const double seconds = std::chrono::duration<double>(now - traffic_at_).count();
  const bool first = traffic_at_ == std::chrono::steady_clock::time_point{};
  traffic_at_ = now;
  peers_.clear();
  if (first || seconds <= 0) return;
  // Both ends of a pair count its bytes: sent by one, received by the other.
  std::map<std::string, std::map<std::string, double>> rates;
  for (const auto& pair : traffic) {
    const double rate = static_cast<double>(pair.bytes) / seconds;
    rates[pair.sender][pair.receiver] += rate;
    rates[pair.receiver][pair.sender] += rate;
  }
  for (auto& [job, peers] : rates) {
    auto& list = peers_[job];
    list.assign(peers.begin(), peers.end());
    std::sort(list.begin(), list.end(),
              [](const auto& a, const auto& b) { return a.second > b.second; });
  }
}

std::vector<std::pair<std::string, double>> IpcService::TopPeers(const std::string& job,
                                                                 std::size_t limit) const {
  const auto found = peers_.find(job);
  if (found == peers_.end()) return {};
  const auto& list = found->second;
  return {list.begin(), list.begin() + static_cast<std::ptrdiff_t>(std::min(limit, list.size()))};
}

std::set<std::string> IpcService::JobsSharingRegions(const std::string& job) const {
  return impl_->router_.JobsSharingRegions(job);
}

void IpcService::Stop() {
  if (!impl_ || impl_->stopped_) return;
  impl_->stopped_ = true;
  impl_->timer_.cancel();
  impl_->hold_timer_.cancel();
  impl_->probe_timer_.cancel();
  impl_->direct_->Stop();
  if (impl_->job_socket_) impl_->job_socket_->Stop();
  for (auto& [job, channel] : impl_->channels_) {
    channel->closed = true;
    boost::system::error_code ignored;
    channel->socket.close(ignored);
  }
  impl_->channels_.clear();
}

}  // namespace tern::ipc
