// DirectBroker: one agent's decisions for direct call connections (docs/ipc.md "Direct calls"),
// without I/O. It takes events (a job's direct_open / direct_accept, an ask from another node,
// a connection that presented a token, a finished connect, time passing, a right or a job gone)
// and returns actions (answers to jobs, connections to close, connections to revoke). The agent
// does the sockets; connections are opaque ids it chooses, each with the inode of its socket.
//
// What it keeps:
//  - accepting ports: a port whose receive right a job here holds and on which that job asked
//    direct_accept; its waiting accepts (each with a deadline) and its queued connections
//    (at most kMaxQueued, tokens handed out but not yet used count against it);
//  - tokens: 16 random bytes, each for one connection to one port, usable once, within
//    kTokenLife;
//  - asks in flight from this node's jobs (a direct_open), answered `unavailable` after
//    kAskDeadline;
//  - records of the direct connection ends handed to each job (inode, role, the right's name
//    and port): what revocation checks and what a moving job must shut down;
//  - suspended jobs (moving): they get no new connections until resumed.
//
// Thread-safety: none; one thread (the agent's io_context) drives it.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <tern/expected.hpp>
#include <tern/ipc/direct_wire.hpp>
#include <tern/ipc/job_wire.hpp>
#include <tern/ipc/port_router.hpp>
#include <vector>

namespace tern::ipc {

class DirectBroker {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr std::size_t kMaxQueued = 64;
  static constexpr std::chrono::milliseconds kAskDeadline{2000};
  static constexpr std::chrono::milliseconds kTokenLife{2000};
  using TokenSource = std::function<DirectToken()>;

  enum class Role : std::uint8_t { kClient = 1, kServer = 2 };
  // A direct connection end a job holds, and the right it rests on.
  struct Record {
    std::uint64_t inode = 0;
    Role role = Role::kClient;
    std::uint32_t name = 0;  // the client's send name, the server's receive name
    ObjectId port;
  };

  // An answer to a job's request; with status kOk, `connection` goes with it (its fd).
  struct Reply {
    std::string job;
    std::uint32_t request = 0;
    JobStatus status = JobStatus::kOk;
    std::string why;
    std::uint64_t connection = 0;
  };
  struct Revoke {
    std::string job;
    std::uint64_t inode = 0;  // shut the job's socket with this inode down
  };
  struct Actions {
    std::vector<Reply> replies;
    std::vector<std::uint64_t> closes;  // connections the agent holds: close them
    std::vector<Revoke> revokes;
    bool empty() const { return replies.empty() && closes.empty() && revokes.empty(); }
  };

  // `tokens` makes tokens (tests); by default 16 bytes from OpenSSL's RAND_bytes.
  explicit DirectBroker(TokenSource tokens = {});

  // ---- the side that holds the receive right ------------------------------------------------
  // A job's direct_accept on its receive right `name` to `port` (checked by the caller). Marks
  // the port as accepting (for this job and name) and answers with a queued connection, or
  // waits until one comes or `timeout_ms` (kWaitForever: no limit) passes (kTimedOut).
  void Accept(const std::string& job, std::uint32_t request, std::uint32_t name, ObjectId port,
              std::uint32_t timeout_ms, Clock::time_point now);
  // Who accepts on `port` here (job, receive name), if anyone.
  std::optional<std::pair<std::string, std::uint32_t>> Acceptor(ObjectId port) const;
  // An ask for a connection to `port`: a token, or why not (the port does not accept here, its
  // job is moving, its queue is full).
  Expected<DirectToken> Grant(ObjectId port, Clock::time_point now);
  // A connection (whose socket has `inode`) presented `token`: handed to a waiting accept,
  // queued, or closed (unknown, used or expired token; port no longer accepting; queue full).
  void Arrived(std::uint64_t connection, std::uint64_t inode, const DirectToken& token,
               Clock::time_point now);

  // ---- the client's side ----------------------------------------------------------------------
  // A job's direct_open on its send right `name` to `port`, which the caller now asks for;
  // returns the ask id.
  std::uint64_t StartAsk(const std::string& job, std::uint32_t request, std::uint32_t name,
                         ObjectId port, Clock::time_point now);
  // Whether the ask is still waiting for its answer.
  bool AskPending(std::uint64_t ask) const;
  // The ask was refused: its job gets kUnavailable (kDeadName if `dead`) with `why`.
  void AskRefused(std::uint64_t ask, const std::string& why, bool dead = false);
  // The ask's connection is made: the job gets it, or it is closed if the ask has been
  // answered meanwhile (timed out, job gone or moving).
  void AskConnected(std::uint64_t ask, std::uint64_t connection, std::uint64_t inode);

  // ---- rights, jobs, time ---------------------------------------------------------------------
  // After a job's requests ran: each of its records, and each port it accepts on, whose right
  // `held` says is gone, is revoked (records) or stops accepting (its queued connections are
  // closed, its waiting accepts answered kInvalidName).
  using RightHeld = std::function<bool(Role, std::uint32_t name, ObjectId port)>;
  void CheckRights(const std::string& job, const RightHeld& held);
  // Moving: revokes every record of the job, closes its ports' queued connections, answers its
  // waiting accepts kTimedOut (libtern then asks again), and refuses it new connections until
  // Resume.
  void Suspend(const std::string& job);
  void Resume(const std::string& job);
  bool Suspended(const std::string& job) const;
  // The job's channel is about to leave (hand-off): its waiting accepts are answered kTimedOut
  // now, so that the answers travel with the channel's unread bytes.
  void Leaving(const std::string& job);
  // The job's channel closed: everything of it is dropped (its sockets are its own to close).
  void JobGone(const std::string& job);

  std::vector<Record> Records(const std::string& job) const;
  std::size_t Queued(ObjectId port) const;

  // Deadlines passed by `now`: accepts time out, tokens expire, asks are answered unavailable.
  void Tick(Clock::time_point now);
  // The earliest deadline still to come, if any.
  std::optional<Clock::time_point> NextDeadline() const;

  // What to do now; clears the list.
  Actions TakeActions();

 private:
  struct WaitingAccept {
    std::string job;
    std::uint32_t request = 0;
    std::optional<Clock::time_point> deadline;
  };
  struct Connection {
    std::uint64_t id = 0;
    std::uint64_t inode = 0;
  };
  struct AcceptingPort {
    std::string job;
    std::uint32_t name = 0;
    std::deque<WaitingAccept> waiting;
    std::deque<Connection> queued;
  };
  struct Token {
    ObjectId port;
    Clock::time_point expiry;
  };
  struct Ask {
    std::string job;
    std::uint32_t request = 0;
    std::uint32_t name = 0;
    ObjectId port;
    Clock::time_point deadline;
  };

  void Hand(const std::string& job, std::uint32_t request, std::uint32_t name, ObjectId port,
            const Connection& connection);
  void StopAccepting(std::map<ObjectId, AcceptingPort>::iterator port);
  void AnswerWaiting(const std::string& job, JobStatus status, const std::string& why);
  std::size_t TokensOut(ObjectId port) const;

  TokenSource tokens_;
  std::map<ObjectId, AcceptingPort> ports_;
  std::map<DirectToken, Token> tokens_out_;
  std::map<std::uint64_t, Ask> asks_;
  std::uint64_t next_ask_ = 1;
  std::map<std::string, std::vector<Record>> records_;
  std::set<std::string> suspended_;
  Actions actions_;
};

}  // namespace tern::ipc
