#include "taskstats.hpp"

#include <linux/taskstats.h>
#include <netlink/genl/ctrl.h>
#include <netlink/genl/genl.h>
#include <netlink/netlink.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <algorithm>
#include <cstring>
#include <string>

namespace tern::agent {
namespace {

struct MsgDeleter {
  void operator()(nl_msg* message) const { nlmsg_free(message); }
};

struct Reply {
  bool got = false;
  taskstats stats{};
};

// Answers to a batch: replies with statistics, and errors (a task gone).
struct Batch {
  std::size_t answers = 0;
  std::size_t failed = 0;
  std::uint64_t io_bytes = 0;
};

int OnReply(nl_msg* message, void* arg);

int OnBatchReply(nl_msg* message, void* arg) {
  auto& batch = *static_cast<Batch*>(arg);
  Reply reply;
  ++batch.answers;
  if (OnReply(message, &reply) == NL_OK && reply.got) {
    batch.io_bytes += reply.stats.read_char + reply.stats.write_char;
  } else {
    ++batch.failed;
  }
  return NL_OK;
}

int OnBatchError(sockaddr_nl*, nlmsgerr*, void* arg) {
  auto& batch = *static_cast<Batch*>(arg);
  ++batch.answers;
  ++batch.failed;
  return NL_SKIP;
}

// Finds TASKSTATS_TYPE_STATS inside the reply's AGGR_PID attribute.
int OnReply(nl_msg* message, void* arg) {
  auto& reply = *static_cast<Reply*>(arg);
  nlattr* top[TASKSTATS_TYPE_MAX + 1] = {};
  if (genlmsg_parse(nlmsg_hdr(message), 0, top, TASKSTATS_TYPE_MAX, nullptr) < 0) return NL_SKIP;
  nlattr* aggregate =
      top[TASKSTATS_TYPE_AGGR_PID] ? top[TASKSTATS_TYPE_AGGR_PID] : top[TASKSTATS_TYPE_AGGR_TGID];
  if (aggregate == nullptr) return NL_SKIP;
  nlattr* inner[TASKSTATS_TYPE_MAX + 1] = {};
  if (nla_parse_nested(inner, TASKSTATS_TYPE_MAX, aggregate, nullptr) < 0) return NL_SKIP;
  nlattr* stats = inner[TASKSTATS_TYPE_STATS];
  if (stats == nullptr) return NL_SKIP;
  // Older kernels send a shorter struct: the fields read here are in every version since 4.
  const auto length =
      std::min<std::size_t>(static_cast<std::size_t>(nla_len(stats)), sizeof reply.stats);
  if (length < offsetof(taskstats, write_char) + sizeof reply.stats.write_char) return NL_SKIP;
  std::memcpy(&reply.stats, nla_data(stats), length);
  reply.got = true;
  return NL_OK;
}

}  // namespace

void Taskstats::SocketDeleter::operator()(nl_sock* socket) const { nl_socket_free(socket); }

Expected<Taskstats> Taskstats::Open() {
  Taskstats client;
  client.socket_.reset(nl_socket_alloc());
  if (!client.socket_) return Fail("cannot allocate a netlink socket");
  if (const int error = genl_connect(client.socket_.get()); error < 0) {
    return Fail(std::string("cannot open generic netlink: ") + nl_geterror(error));
  }
  // Replies are the answers: no ACKs to drain (see the header).
  nl_socket_disable_auto_ack(client.socket_.get());
  {
    const timeval timeout{1, 0};
    ::setsockopt(nl_socket_get_fd(client.socket_.get()), SOL_SOCKET, SO_RCVTIMEO, &timeout,
                 sizeof timeout);
  }
  client.family_ = genl_ctrl_resolve(client.socket_.get(), TASKSTATS_GENL_NAME);
  if (client.family_ < 0) {
    return Fail(std::string("the kernel's TASKSTATS netlink family is not reachable here (") +
                nl_geterror(client.family_) +
                "; it exists only in the first network namespace and with CONFIG_TASKSTATS)");
  }
  return client;
}

Expected<void> Taskstats::Send(pid_t tid) {
  std::unique_ptr<nl_msg, MsgDeleter> message(nlmsg_alloc());
  if (!message) return Fail("cannot allocate a netlink message");
  if (genlmsg_put(message.get(), NL_AUTO_PORT, NL_AUTO_SEQ, family_, 0, 0, TASKSTATS_CMD_GET,
                  TASKSTATS_VERSION) == nullptr ||
      nla_put_u32(message.get(), TASKSTATS_CMD_ATTR_PID, static_cast<std::uint32_t>(tid)) < 0) {
    return Fail("cannot build a taskstats request");
  }
  if (const int error = nl_send_auto(socket_.get(), message.get()); error < 0) {
    return Fail(std::string("cannot send a taskstats request: ") + nl_geterror(error));
  }
  return {};
}

std::optional<std::uint64_t> Taskstats::IoBytes(std::span<const pid_t> tids) {
  Batch batch;
  std::size_t sent = 0;
  for (pid_t tid : tids) {
    if (!Send(tid)) break;
    ++sent;
  }
  nl_socket_modify_cb(socket_.get(), NL_CB_VALID, NL_CB_CUSTOM, OnBatchReply, &batch);
  nl_socket_modify_err_cb(socket_.get(), NL_CB_CUSTOM, OnBatchError, &batch);
  while (batch.answers < sent) {
    if (nl_recvmsgs_default(socket_.get()) < 0) break;
  }
  nl_socket_modify_err_cb(socket_.get(), NL_CB_DEFAULT, nullptr, nullptr);
  if (batch.answers < sent) {
    // Answers still on their way would be read as those of the next call: start afresh.
    Drain();
    return std::nullopt;
  }
  if (sent < tids.size() || batch.failed > 0) return std::nullopt;
  return batch.io_bytes;
}

void Taskstats::Drain() {
  char discard[4096];
  while (::recv(nl_socket_get_fd(socket_.get()), discard, sizeof discard, MSG_DONTWAIT) > 0) {
  }
}

Expected<TaskUsage> Taskstats::Get(pid_t tid) {
  if (auto sent = Send(tid); !sent) return Unexpected<Error>{sent.error()};
  Reply reply;
  nl_socket_modify_cb(socket_.get(), NL_CB_VALID, NL_CB_CUSTOM, OnReply, &reply);
  if (const int error = nl_recvmsgs_default(socket_.get()); error < 0) {
    return Fail("taskstats of " + std::to_string(tid) + ": " + nl_geterror(error));
  }
  if (!reply.got) return Fail("taskstats of " + std::to_string(tid) + ": no statistics in reply");
  TaskUsage usage;
  // ac_utime + ac_stime, not cpu_run_real_total: the latter is the scheduler's raw sum, stale
  // while the task runs (a busy job under a CPU quota read 0 and 0.97 CPU in turns).
  usage.cpu_ns = (reply.stats.ac_utime + reply.stats.ac_stime) * 1000;
  usage.io_bytes = reply.stats.read_char + reply.stats.write_char;
  usage.hiwater_rss_bytes = reply.stats.hiwater_rss * 1024;
  return usage;
}

}  // namespace tern::agent
