// A scripted stand-in for the agent's side of a job's IPC channel, for libtern's tests.
//
// It holds one end of a socketpair (the other is job_fd(), for Channel::FromFd) and serves
// the channel from its own thread with a tiny model of one job's rights: ports with bounded
// FIFO queues, receive / send / send-once names, receives that wait with a timeout, names and
// memfd regions. Tests steer it with hooks: `script` may answer (or hold) any request before
// the model does, and `drop` may lose any message a send would queue.
//
// Direct calls (docs/ipc.md "Direct calls"): direct_open on a send name pairs a Unix
// socketpair with a waiting (or later) direct_accept on the port's receive name; the first
// direct_accept marks the port as taking direct calls, and direct_open of a port that never
// asked is `unavailable`. The fake keeps a duplicate of each server end so that
// BreakDirectConnections() can shut every connection down, as the agents' revocation does.
//
// Limits: one job only; a send to a full queue with FullPolicy::kWait and a timeout fails with
// kTimedOut at once (a train stops there too), and one that waits without end is taken over the
// limit (the agent would take it once there is room); link operations exist only through `script`;
// a client that closes its direct end is seen by the server (end of file), a server that closes its
// end is not seen by the client (the fake's duplicate keeps it open) until
// BreakDirectConnections().
//
// Its writes to the job never block, as the agent's do not (IpcService queues a job's replies):
// what the job's socket does not take now waits in a queue, sent as the socket drains. A fake
// that blocked in sendmsg stopped reading, and a job whose reading thread waited to write while
// its writing thread was blocked in sendmsg never woke (a hang seen in StreamFixture).
//
// Thread-safety: hooks and counters may be set and read from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <tern/ipc/job_wire.hpp>
#include <thread>
#include <vector>

namespace tern::testing {

class FakeAgent {
 public:
  struct Answer {
    ipc::JobStatus status = ipc::JobStatus::kOk;
    std::string body;      // the reply body, or the error text
    int fd = -1;           // passed with SCM_RIGHTS (not owned unless owns_fd)
    bool owns_fd = false;  // the model's: closed once sent
    bool hold = false;     // no reply now: the test answers later with Reply()
  };
  // Returns an answer to send now, or nullopt to let the model handle the request.
  using Script = std::function<std::optional<Answer>(const ipc::JobRequest&)>;
  // Returns true to lose the message instead of queueing it (the send still succeeds).
  using Drop = std::function<bool(const ipc::Message&)>;

  FakeAgent();
  ~FakeAgent();
  FakeAgent(const FakeAgent&) = delete;
  FakeAgent& operator=(const FakeAgent&) = delete;

  // The job's end; the caller takes ownership (once).
  int TakeJobFd();

  void set_script(Script script);
  void set_drop(Drop drop);
  // Answers a request the script held.
  void Reply(std::uint32_t request_id, const Answer& answer);
  // Closes the agent's end: the job sees the channel closed.
  void Close();

  // Messages sent so far with this message id (e.g. RPC acks).
  int sent_with_id(std::uint32_t id);
  // Requests of this op received so far (whether the script or the model answered them).
  int requests_with_op(ipc::JobOp op);
  // The ops of every request received so far, in the order they came.
  std::vector<ipc::JobOp> ops_in_order();
  // Shuts down every direct connection made so far: both jobs read end of file.
  void BreakDirectConnections();
  // Direct connections made so far.
  std::size_t direct_ends_made();

 private:
  struct Right {
    enum Kind { kReceive, kSend, kSendOnce, kRegion } kind;
    std::uint64_t object = 0;
  };
  struct Port {
    std::deque<ipc::Message> queue;
    std::uint32_t limit = ipc::kDefaultQueueLimit;
  };
  // A port's direct calls: accepts waiting for a connection, server ends waiting for an accept.
  struct DirectPort {
    struct Accepter {
      std::uint32_t request = 0;
      std::chrono::steady_clock::time_point deadline;
    };
    std::deque<Accepter> accepters;
    std::deque<int> queued;  // server ends (owned)
  };
  struct Receiver {
    std::uint32_t request = 0;
    std::uint64_t port = 0;
    std::chrono::steady_clock::time_point deadline;
    std::uint32_t many = 0;  // receive_many: up to this many, answered as [u32 count][messages]
  };

  void Serve();
  void Handle(const ipc::JobRequest& request);
  // The model's answer (mu_ held); nullopt: a receive now waiting.
  std::optional<Answer> Model(const ipc::JobRequest& request);
  std::optional<Answer> DirectOpen(std::uint32_t send_name);           // mu_ held
  std::optional<Answer> DirectAccept(const ipc::JobRequest& request);  // mu_ held
  // Queues a sent message (mu_ held); the status to answer the send with.
  ipc::JobStatus Enqueue(const ipc::SendRequest& request);
  void Deliver(std::uint64_t port);  // mu_ held
  void Expire();                     // mu_ held
  std::uint32_t NewName(Right right);
  // Queues the answer's frame and sends what the socket takes now (a duplicate of its fd is
  // queued only if the fd could not go at once).
  void Send(std::uint32_t request_id, const Answer& answer);
  // Sends queued frames until the socket would block (write_mu_ held).
  void Flush();

  // A frame on its way to the job; `fd` rides on its first byte (a duplicate the queue owns
  // once Send has returned with it unsent).
  struct Outgoing {
    std::string frame;
    int fd = -1;
    bool owns_fd = false;
    std::size_t offset = 0;
  };

  int agent_fd_ = -1;
  int job_fd_ = -1;
  std::mutex mu_;        // the model and hooks
  std::mutex write_mu_;  // out_, and one frame per write
  std::deque<Outgoing> out_;
  Script script_;
  Drop drop_;
  std::map<std::uint32_t, Right> names_;
  std::map<std::uint64_t, Port> ports_;
  std::map<std::uint64_t, int> regions_;  // memfds
  std::map<std::string, std::uint64_t> registry_;
  std::deque<Receiver> receivers_;
  std::map<std::uint32_t, int> sent_ids_;
  std::map<ipc::JobOp, int> ops_seen_;
  std::vector<ipc::JobOp> ops_order_;
  std::map<std::uint64_t, DirectPort> direct_;  // ports that asked for direct calls
  std::vector<int> direct_ends_;                // duplicates of the server ends (owned)
  std::uint32_t next_name_ = 100;
  std::uint64_t next_object_ = 1;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace tern::testing
