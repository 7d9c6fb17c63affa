// tern-ipc-probe: a job that exercises one IPC semantic and prints what it saw; run by the
// integration tests on the local cluster. Exit 0: behaved as docs/ipc.md says; 1: did not.
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <set>
#include <string>
#include <tern/ipc.hpp>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using tern::Channel;
using tern::ipc::JobStatus;

namespace {

int Fail(const std::string& what) {
  std::printf("FAIL %s\n", what.c_str());
  return 1;
}

std::uint32_t LookupRetrying(const Channel& channel, const std::string& name) {
  for (int i = 0; i < 300; ++i) {
    auto found = channel.name_lookup(name);
    if (found) return *found;
    std::this_thread::sleep_for(100ms);
  }
  return 0;
}

// Owns a port under NAME; prints the first message it gets and how many were queued.
int Owner(const Channel& channel, const std::string& name) {
  auto port = channel.port_allocate();
  auto send = port ? channel.make_send(*port) : tern::IpcResult<std::uint32_t>(port.error());
  if (!send || !channel.name_register(name, *send)) return Fail("owner setup");
  std::printf("owner ready\n");
  std::fflush(stdout);
  auto first = channel.receive(*port, 60s);
  if (!first) return Fail("owner receive: " + first.error().ToString());
  auto status = channel.port_status(*port);
  std::printf("first=%s queued_after=%u\n", std::string(tern::FirstBytes(*first)).c_str(),
              status ? status->queued : 999u);
  return 0;
}

// docs/ipc.md "Port homes that survive their agent": a port homed on this node (NAME) that
// holds messages across a kill -9 and restart of this node's agent. Receives nothing until a
// message on NAME-go (poke, after the restart), then takes 2*COUNT messages that must be
// "0", "1", ... in order, each once: the first COUNT were queued before the kill, the rest are
// sent after it through the sender's old right. A request in flight at the kill fails with
// `unavailable` and is asked again.
int Holder(const Channel& channel, const std::string& name, int count) {
  auto port = channel.port_allocate(static_cast<std::uint32_t>(4 * count));
  auto send = port ? channel.make_send(*port) : tern::IpcResult<std::uint32_t>(port.error());
  auto go = channel.port_allocate();
  auto go_send = go ? channel.make_send(*go) : tern::IpcResult<std::uint32_t>(go.error());
  if (!send || !go_send || !channel.name_register(name, *send) ||
      !channel.name_register(name + "-go", *go_send)) {
    return Fail("holder setup");
  }
  std::printf("holder ready\n");
  std::fflush(stdout);
  const auto receive = [&](std::uint32_t from,
                           std::chrono::seconds wait) -> tern::IpcResult<tern::Message> {
    const auto deadline = std::chrono::steady_clock::now() + wait;
    for (;;) {
      auto got = channel.receive(from, 5s);
      if (got || std::chrono::steady_clock::now() >= deadline) return got;
      if (got.status() != JobStatus::kTimedOut && got.status() != JobStatus::kUnavailable) {
        return got;
      }
      if (got.status() == JobStatus::kUnavailable) {
        std::printf("receive: %s (asked again)\n", got.error().ToString().c_str());
        std::fflush(stdout);
      }
    }
  };
  if (auto poked = receive(*go, 300s); !poked) return Fail("go: " + poked.error().ToString());
  std::printf("go\n");
  std::fflush(stdout);
  for (int i = 0; i < 2 * count; ++i) {
    auto got = receive(*port, 60s);
    if (!got) return Fail("message " + std::to_string(i) + ": " + got.error().ToString());
    const std::string text(tern::FirstBytes(*got));
    if (text != std::to_string(i))
      return Fail("got " + text + " where " + std::to_string(i) + " was due");
  }
  auto extra = channel.receive(*port, 500ms);
  if (extra) return Fail("a message more: " + std::string(tern::FirstBytes(*extra)));
  std::printf("received %d in order, each once\n", 2 * count);
  return 0;
}

// The other end of Holder, on another node: sends "0".."COUNT-1" to NAME, then waits for a
// message on its own NAME-sender-go (poke) and sends COUNT.."2*COUNT-1" through the same right.
int QueueSender(const Channel& channel, const std::string& name, int count) {
  const std::uint32_t to = LookupRetrying(channel, name);
  auto go = channel.port_allocate();
  auto go_send = go ? channel.make_send(*go) : tern::IpcResult<std::uint32_t>(go.error());
  if (to == 0 || !go_send || !channel.name_register(name + "-sender-go", *go_send)) {
    return Fail("sender setup");
  }
  const auto send_range = [&](int from, int until) {
    for (int i = from; i < until; ++i) {
      if (auto sent = channel.send(tern::BytesMessage(to, std::to_string(i))); !sent) {
        return Fail("send " + std::to_string(i) + ": " + sent.error().ToString());
      }
    }
    std::printf("sent %d\n", until);
    std::fflush(stdout);
    return 0;
  };
  if (send_range(0, count) != 0) return 1;
  auto poked = channel.receive(*go, 300s);
  if (!poked) return Fail("go: " + poked.error().ToString());
  return send_range(count, 2 * count);
}

// Sends "go" to each NAME given (looked up, retrying).
int Poke(const Channel& channel, const std::vector<std::string>& names) {
  for (const auto& name : names) {
    const std::uint32_t to = LookupRetrying(channel, name);
    if (to == 0) return Fail("no " + name);
    if (auto sent = channel.send(tern::BytesMessage(to, "go")); !sent) {
      return Fail("poke " + name + ": " + sent.error().ToString());
    }
  }
  std::printf("poked\n");
  return 0;
}

// Another user's job: once NAME is registered (by someone else), tries to register it too and
// to unregister it. Exit 0 when both are refused, printing how.
int Squatter(const Channel& channel, const std::string& name) {
  if (LookupRetrying(channel, name) == 0) return Fail("the name never appeared");
  auto port = channel.port_allocate();
  auto send = port ? channel.make_send(*port) : tern::IpcResult<std::uint32_t>(port.error());
  if (!send) return Fail("squatter setup");
  auto taken = channel.name_register(name, *send);
  auto removed = channel.name_unregister(name);
  std::printf("register: %s\nunregister: %s\n", taken ? "ok" : taken.error().ToString().c_str(),
              removed ? "ok" : removed.error().ToString().c_str());
  return !taken && taken.status() == JobStatus::kExists && !removed ? 0 : 1;
}

// Guesses names it was never given, then sends once through a name it looked up.
int Forger(const Channel& channel, const std::string& name) {
  int refused = 0;
  for (std::uint32_t guess = 1; guess <= 64; ++guess) {
    auto sent = channel.send(tern::BytesMessage(guess, "forged"));
    if (sent.status() == JobStatus::kInvalidName) ++refused;
  }
  std::printf("refused %d of 64 forged names\n", refused);
  const auto to = LookupRetrying(channel, name);
  if (to == 0) return Fail("lookup");
  if (!channel.send(tern::BytesMessage(to, "legit"))) return Fail("legit send");
  return refused == 64 ? 0 : 1;
}

// A full queue: fail, wait (timing out, then succeeding), notify.
int Queue(const Channel& channel) {
  auto port = channel.port_allocate(2);
  auto send = channel.make_send(*port);
  auto notify = channel.port_allocate();
  if (!port || !send || !notify) return Fail("setup");
  for (int i = 0; i < 2; ++i) {
    if (!channel.send(tern::BytesMessage(*send, "fill"))) return Fail("fill");
  }
  auto fail = channel.send(tern::BytesMessage(*send, "x"), tern::ipc::FullPolicy::kFail);
  std::printf("fail: %s\n", std::string(tern::ipc::JobStatusName(fail.status())).c_str());
  auto timed = channel.send(tern::BytesMessage(*send, "x"), tern::ipc::FullPolicy::kWait, 200ms);
  std::printf("wait 200ms: %s\n", std::string(tern::ipc::JobStatusName(timed.status())).c_str());
  auto later =
      channel.send(tern::BytesMessage(*send, "x"), tern::ipc::FullPolicy::kNotify, 0ms, *notify);
  std::printf("notify: %s\n", std::string(tern::ipc::JobStatusName(later.status())).c_str());
  std::thread drain([&] {
    std::this_thread::sleep_for(300ms);
    // The first slot that frees goes to the waiting sender; the second is room to notify.
    (void)channel.receive(*port, 1s);
    (void)channel.receive(*port, 1s);
  });
  auto waited =
      channel.send(tern::BytesMessage(*send, "waited"), tern::ipc::FullPolicy::kWait, 10s);
  drain.join();
  std::printf("wait 10s: %s\n", std::string(tern::ipc::JobStatusName(waited.status())).c_str());
  auto possible = channel.receive(*notify, 5s);
  const bool notified = possible && possible->id == tern::ipc::kSendPossibleNotification;
  std::printf("send-possible: %s\n", notified ? "yes" : "no");
  return fail.status() == JobStatus::kQueueFull && timed.status() == JobStatus::kTimedOut &&
                 later.status() == JobStatus::kQueueFull && waited && notified
             ? 0
             : 1;
}

// Holds a send right to NAME with a dead-name request; reports when the port dies.
int Watcher(const Channel& channel, const std::string& name) {
  const auto to = LookupRetrying(channel, name);
  auto notify = channel.port_allocate();
  if (to == 0 || !notify) return Fail("setup");
  if (!channel.request_notification(to, tern::ipc::NotificationKind::kDeadName, *notify)) {
    return Fail("request_notification");
  }
  std::printf("watching\n");
  std::fflush(stdout);
  auto note = channel.receive(*notify, 60s);
  if (!note || note->id != tern::ipc::kDeadNameNotification) return Fail("no dead-name notice");
  auto dead = tern::NotificationName(*note);
  auto sent = channel.send(tern::BytesMessage(to, "after death"));
  std::printf("dead-name %s, send after: %s\n", dead && *dead == to ? "for our name" : "other",
              std::string(tern::ipc::JobStatusName(sent.status())).c_str());
  return dead && *dead == to && sent.status() == JobStatus::kDeadName ? 0 : 1;
}

// Cancel succeeds before a match and fails after one.
int LinkCancel(const Channel& channel) {
  auto ends = channel.link_create();
  if (!ends) return Fail("link_create");
  auto first = channel.link_send(ends->first, tern::BytesMessage(0, "one"));
  auto cancelled = channel.cancel(*first);
  auto second = channel.link_send(ends->first, tern::BytesMessage(0, "two"));
  auto receive = channel.link_receive(ends->second);
  auto got = channel.wait(*receive, 5s);
  auto late = channel.cancel(*second);
  std::printf("cancel before match: %s; received \"%s\"; cancel after match: %s\n",
              std::string(tern::ipc::JobStatusName(cancelled.status())).c_str(),
              got ? std::string(tern::FirstBytes(got->message)).c_str() : "-",
              std::string(tern::ipc::JobStatusName(late.status())).c_str());
  // Receive on any link: messages sent on the far ends of two links both arrive.
  auto other = channel.link_create();
  if (!other) return Fail("second link_create");
  (void)channel.link_send(ends->second, tern::BytesMessage(0, "via link 1"));
  (void)channel.link_send(other->second, tern::BytesMessage(0, "via link 2"));
  std::set<std::string> seen;
  for (int i = 0; i < 2; ++i) {
    auto any = channel.link_receive(0);
    auto result = any ? channel.wait(*any, 5s) : tern::IpcResult<tern::OpResult>(any.error());
    if (result) seen.insert(std::string(tern::FirstBytes(result->message)));
  }
  std::printf("receive on any link: %zu of 2\n", seen.size());
  return cancelled && got && tern::FirstBytes(got->message) == "two" &&
                 late.status() == JobStatus::kAlreadyMatched && seen.size() == 2
             ? 0
             : 1;
}

// Registers an inbox under NAME and returns its receive name (0 on failure).
std::uint32_t Inbox(const Channel& channel, const std::string& name) {
  auto port = channel.port_allocate();
  if (!port) return 0;
  auto send = channel.make_send(*port);
  if (!send || !channel.name_register(name, *send)) return 0;
  (void)channel.deallocate(*send);  // the name service keeps its own send right
  std::printf("inbox %s ready\n", name.c_str());
  std::fflush(stdout);
  return *port;
}

// Creates a region, writes to it, sends it to NAME's inbox and watches for the peer's write.
int RegionOwner(const Channel& channel, const std::string& name, bool expect_shared) {
  auto region = channel.region_create(4096);
  if (!region) return Fail("region_create: " + region.error().ToString());
  auto mapped = channel.region_map(*region);
  if (!mapped) return Fail("region_map: " + mapped.error().ToString());
  std::snprintf(static_cast<char*>(mapped->data()), 64, "hello from A");
  const auto to = LookupRetrying(channel, name);
  if (to == 0) return Fail("lookup");
  if (!channel.send(tern::MessageBuilder(to).bytes("region").region(*region).build())) {
    return Fail("send region");
  }
  bool changed = false;
  for (int i = 0; i < (expect_shared ? 50 : 20) && !changed; ++i) {
    std::this_thread::sleep_for(100ms);
    changed = std::string(static_cast<const char*>(mapped->data())) == "hello from B";
  }
  std::printf("owner sees: %s\n", static_cast<const char*>(mapped->data()));
  return changed == expect_shared ? 0 : 1;
}

int RegionPeer(const Channel& channel, const std::string& name) {
  const auto inbox = Inbox(channel, name);
  if (inbox == 0) return Fail("inbox");
  auto message = channel.receive(inbox, 60s);
  if (!message || message->items.size() < 2) return Fail("no region arrived");
  auto mapped = channel.region_map(message->items[1].name);
  if (!mapped) return Fail("region_map: " + mapped.error().ToString());
  std::printf("peer sees: %s\n", static_cast<const char*>(mapped->data()));
  std::snprintf(static_cast<char*>(mapped->data()), 64, "hello from B");
  std::fflush(stdout);
  std::this_thread::sleep_for(4s);  // keep the mapping while the owner looks
  return 0;
}

std::string Pattern(std::size_t size) {
  std::string data(size, '\0');
  for (std::size_t i = 0; i < size; ++i) data[i] = static_cast<char>('a' + (i * 7 + i / 4096) % 26);
  return data;
}

// Out-of-line data larger than one frame between nodes (a blast).
int OolClient(const Channel& channel, const std::string& name, std::size_t size) {
  const auto to = LookupRetrying(channel, name);
  if (to == 0) return Fail("lookup");
  auto sent = channel.send(tern::MessageBuilder(to).out_of_line(Pattern(size)).build(),
                           tern::ipc::FullPolicy::kWait, 30s);
  std::printf("sent %zu bytes out of line: %s\n", size,
              std::string(tern::ipc::JobStatusName(sent.status())).c_str());
  return sent ? 0 : 1;
}

int OolServer(const Channel& channel, const std::string& name, std::size_t size) {
  const auto inbox = Inbox(channel, name);
  if (inbox == 0) return Fail("inbox");
  auto message = channel.receive(inbox, 60s);
  if (!message) return Fail("receive: " + message.error().ToString());
  const bool ok = message->items.size() == 1 &&
                  message->items[0].kind == tern::ipc::ItemKind::kOutOfLine &&
                  message->items[0].bytes() == Pattern(size);
  std::printf("got %zu bytes out of line, %s\n", tern::FirstBytes(*message).size(),
              ok ? "intact" : "DAMAGED");
  return ok ? 0 : 1;
}

// A stream through a PortWriter into a small queue (8): the writer runs ahead by whole trains
// and is held back by the full queue, never refused; the reader sees every message once, in
// order.
constexpr std::uint32_t kStreamMessages = 200000;

int StreamWriter(const Channel& channel, const std::string& name) {
  const auto to = LookupRetrying(channel, name);
  if (to == 0) return Fail("lookup");
  tern::PortWriter writer(channel, to, {.window = 4, .train_bytes = 16 << 10});
  for (std::uint32_t i = 0; i < kStreamMessages; ++i) {
    auto written = writer.write(std::to_string(i), i);
    if (!written) return Fail("write " + std::to_string(i) + ": " + written.error().ToString());
  }
  auto flushed = writer.flush();
  std::printf("wrote %llu, accepted %llu: %s\n", static_cast<unsigned long long>(writer.written()),
              static_cast<unsigned long long>(writer.accepted()),
              std::string(tern::ipc::JobStatusName(flushed.status())).c_str());
  return flushed && writer.accepted() == kStreamMessages ? 0 : 1;
}

// Bulk: COUNT messages of one MiB each through a PortWriter (eight 1 MiB trains on their way
// at once), read by a PortReader on another node, each checked.
constexpr std::uint32_t kBulkMessages = 160;

std::string BulkMessage(std::uint32_t i) {
  std::string bytes(1u << 20, static_cast<char>('a' + i % 26));
  std::memcpy(bytes.data(), &i, sizeof i);
  return bytes;
}

// `direct` false: the stream stays on the agents (PortWriter::Options::direct).
int BulkWriter(const Channel& channel, const std::string& name, bool direct) {
  const auto to = LookupRetrying(channel, name);
  if (to == 0) return Fail("lookup");
  tern::PortWriter writer(channel, to, {.direct = direct});
  for (std::uint32_t i = 0; i < kBulkMessages; ++i) {
    auto written = writer.write(BulkMessage(i), i);
    if (!written) return Fail("write " + std::to_string(i) + ": " + written.error().ToString());
  }
  auto flushed = writer.flush();
  std::printf("wrote %llu MiB: %s\n", static_cast<unsigned long long>(writer.accepted()),
              std::string(tern::ipc::JobStatusName(flushed.status())).c_str());
  return flushed && writer.accepted() == kBulkMessages ? 0 : 1;
}

// A port with room for `limit` messages, registered under `name` ("inbox NAME ready" printed
// once it is); 0 if that failed.
std::uint32_t ReadyInbox(const Channel& channel, const std::string& name, std::uint32_t limit) {
  auto port = channel.port_allocate(limit);
  auto send = port ? channel.make_send(*port) : tern::IpcResult<std::uint32_t>(port.error());
  if (!send || !channel.name_register(name, *send)) return 0;
  std::printf("inbox %s ready\n", name.c_str());
  std::fflush(stdout);
  return *port;
}

int BulkReader(const Channel& channel, const std::string& name, bool direct) {
  // A queue that never holds the writers back (1000 messages, as the IPC bench's): all eight
  // trains of every writer are on their way all the time.
  const std::uint32_t inbox = ReadyInbox(channel, name, 1000);
  if (inbox == 0) return Fail("setup");
  tern::PortReader reader(channel, inbox, {.batch = 64, .direct = direct});
  tern::MessageView message;
  for (std::uint32_t i = 0; i < kBulkMessages; ++i) {
    auto got = reader.next(message, 60s);
    if (!got) return Fail("next after " + std::to_string(i) + ": " + got.error().ToString());
    if (message.id != i || message.bytes() != BulkMessage(i)) {
      return Fail("message " + std::to_string(i) + " damaged or out of order");
    }
  }
  std::printf("read %u MiB intact\n", kBulkMessages);
  return 0;
}

int StreamReader(const Channel& channel, const std::string& name) {
  const std::uint32_t port = ReadyInbox(channel, name, 8);
  if (port == 0) return Fail("setup");
  tern::PortReader reader(channel, port, 64);
  tern::MessageView message;
  for (std::uint32_t i = 0; i < kStreamMessages; ++i) {
    auto got = reader.next(message, 60s);
    if (!got) return Fail("next after " + std::to_string(i) + ": " + got.error().ToString());
    if (message.id != i || message.bytes() != std::to_string(i)) {
      return Fail("message " + std::to_string(i) + " out of order: id " +
                  std::to_string(message.id) + " \"" + std::string(message.bytes()) + "\"");
    }
  }
  auto extra = reader.next(message, 500ms);
  std::printf("read %u in order; then: %s\n", kStreamMessages,
              std::string(tern::ipc::JobStatusName(extra.status())).c_str());
  return extra.status() == JobStatus::kTimedOut ? 0 : 1;
}

// Direct streams (docs/ipc.md "Direct streams"). dstream-writer NAME COUNT PAUSE_US
// [HOLD_AT HOLD_MS]: COUNT messages (id i, bytes "i") through a PortWriter, PAUSE_US between
// messages, flushed every 100 so that each reaches the reader soon; after HOLD_AT messages it
// prints "holding" and does nothing for HOLD_MS (a writer that holds its connection without
// looking at it, as a move may find it). Prints how many the reader got and how many of them
// went over a connection.
int DirectStreamWriter(const Channel& channel, const std::string& name, std::uint32_t count,
                       long pause_us, long hold_at, long hold_ms) {
  const auto to = LookupRetrying(channel, name);
  if (to == 0) return Fail("lookup");
  tern::PortWriter writer(channel, to, {.direct = true});
  for (std::uint32_t i = 0; i < count; ++i) {
    auto written = writer.write(std::to_string(i), i);
    if (!written) return Fail("write " + std::to_string(i) + ": " + written.error().ToString());
    if (i % 100 == 99) {
      if (auto flushed = writer.flush(); !flushed)
        return Fail("flush: " + flushed.error().ToString());
    }
    if (pause_us > 0) std::this_thread::sleep_for(std::chrono::microseconds(pause_us));
    if (static_cast<long>(i) + 1 == hold_at) {
      if (auto flushed = writer.flush(); !flushed)
        return Fail("flush: " + flushed.error().ToString());
      std::printf("holding after %ld, direct %llu\n", hold_at,
                  static_cast<unsigned long long>(writer.accepted_direct()));
      std::fflush(stdout);
      std::this_thread::sleep_for(std::chrono::milliseconds(hold_ms));
    }
  }
  auto flushed = writer.flush();
  std::printf("wrote %llu, accepted %llu, direct %llu: %s\n",
              static_cast<unsigned long long>(writer.written()),
              static_cast<unsigned long long>(writer.accepted()),
              static_cast<unsigned long long>(writer.accepted_direct()),
              std::string(tern::ipc::JobStatusName(flushed.status())).c_str());
  return flushed && writer.accepted() == count ? 0 : 1;
}

// Plain sends direct (docs/ipc.md "Plain sends direct"). plain-writer NAME COUNT PAUSE_US: COUNT
// messages (id i, bytes "i") each with Channel::send (kWait), PAUSE_US between them; to a
// PortReader they go over a connection. Prints how many were sent.
int PlainWriter(const Channel& channel, const std::string& name, std::uint32_t count,
                long pause_us) {
  const auto to = LookupRetrying(channel, name);
  if (to == 0) return Fail("lookup");
  for (std::uint32_t i = 0; i < count; ++i) {
    auto sent = channel.send(tern::BytesMessage(to, std::to_string(i), i),
                             tern::ipc::FullPolicy::kWait, tern::kForever);
    if (!sent) return Fail("send " + std::to_string(i) + ": " + sent.error().ToString());
    if (pause_us > 0) std::this_thread::sleep_for(std::chrono::microseconds(pause_us));
  }
  std::printf("sent %u: ok\n", count);
  return 0;
}

// dstream-reader NAME COUNT: reads with a PortReader, every message checked to be the next in
// order (none lost, none twice), then nothing more. plain-reader NAME COUNT: the same with
// Channel::receive, which never opts in: every message must be exactly as written (one bytes
// item, its own id: no stream header, no sync).
int DirectStreamReader(const Channel& channel, const std::string& name, std::uint32_t count,
                       bool plain) {
  const std::uint32_t port = ReadyInbox(channel, name, 256);
  if (port == 0) return Fail("setup");
  std::uint64_t direct = 0;
  std::uint64_t shared = 0;
  if (plain) {
    for (std::uint32_t i = 0; i < count; ++i) {
      auto got = channel.receive(port, 60s);
      if (!got) return Fail("receive after " + std::to_string(i) + ": " + got.error().ToString());
      if (got->id != i || got->items.size() != 1 || tern::FirstBytes(*got) != std::to_string(i)) {
        return Fail("message " + std::to_string(i) + " not as written: id " +
                    std::to_string(got->id) + ", " + std::to_string(got->items.size()) + " items");
      }
    }
  } else {
    tern::PortReader reader(channel, port, {.batch = 64, .direct = true});
    tern::MessageView message;
    for (std::uint32_t i = 0; i < count; ++i) {
      auto got = reader.next(message, 60s);
      if (!got) return Fail("next after " + std::to_string(i) + ": " + got.error().ToString());
      if (message.id != i || message.items.size() != 1 || message.bytes() != std::to_string(i)) {
        return Fail("message " + std::to_string(i) + " out of order or changed: id " +
                    std::to_string(message.id) + " \"" + std::string(message.bytes()) + "\"");
      }
    }
    auto extra = reader.next(message, 500ms);
    if (extra) return Fail("a message after the last: id " + std::to_string(message.id));
    direct = reader.handed_direct();
    shared = reader.handed_shared();
  }
  std::printf("read %u in order, each once; %llu direct, %llu of them through shared memory\n",
              count, static_cast<unsigned long long>(direct),
              static_cast<unsigned long long>(shared));
  return 0;
}

// The link end a link-sender or link-echo-client sends to the inbox NAME (made ready first),
// or 0 after saying why. Prints "link end taken" once it holds it.
std::uint32_t TakeLinkEnd(const Channel& channel, const std::string& name) {
  const std::uint32_t inbox = ReadyInbox(channel, name, 16);
  if (inbox == 0) {
    Fail("setup");
    return 0;
  }
  auto handoff = channel.receive(inbox, 60s);
  if (!handoff) {
    Fail("no link end came: " + handoff.error().ToString());
    return 0;
  }
  std::uint32_t end = 0;
  for (const auto& item : handoff->items) {
    if (item.kind == tern::ipc::ItemKind::kLinkEnd) end = item.name;
  }
  if (end == 0) {
    Fail("the handoff carried no link end");
    return 0;
  }
  std::printf("link end taken\n");
  std::fflush(stdout);
  return end;
}

// Makes a link and sends one end to NAME; returns the end kept, or 0 after saying why.
std::uint32_t HandLinkEnd(const Channel& channel, const std::string& name) {
  const auto to = LookupRetrying(channel, name);
  if (to == 0) {
    Fail("lookup");
    return 0;
  }
  auto ends = channel.link_create();
  if (!ends) {
    Fail("link_create: " + ends.error().ToString());
    return 0;
  }
  auto handoff = channel.send(tern::MessageBuilder(to).id(1).link_end(ends->second).build());
  if (!handoff) {
    Fail("handoff: " + handoff.error().ToString());
    return 0;
  }
  return ends->first;
}

// link-receiver NAME: takes a link end sent to its inbox NAME, then receives on it until the
// sender's last message (id 2): every number (id 1, bytes "i") once and in increasing order.
// Prints how many it received, their sum, and how many of them came on a direct connection.
int LinkReceiver(const Channel& channel, const std::string& name) {
  const std::uint32_t end = TakeLinkEnd(channel, name);
  if (end == 0) return 1;
  std::uint64_t received = 0;
  std::uint64_t sum = 0;
  std::uint64_t last = 0;
  for (;;) {
    auto handle = channel.link_receive(end);
    if (!handle) return Fail("link_receive: " + handle.error().ToString());
    auto got = channel.wait(*handle, 120s);
    if (!got) return Fail("wait after " + std::to_string(last) + ": " + got.error().ToString());
    if (got->message.id == 2) break;
    const std::uint64_t number = std::stoull(std::string(tern::FirstBytes(got->message)));
    if (number <= last) {
      return Fail("link message " + std::to_string(number) + " after " + std::to_string(last));
    }
    last = number;
    ++received;
    sum += number;
  }
  std::printf("link received %llu (sum %llu) in order, each once; %llu direct\n",
              static_cast<unsigned long long>(received), static_cast<unsigned long long>(sum),
              static_cast<unsigned long long>(tern::direct_link_matches()));
  return 0;
}

// link-sender NAME COUNT PAUSE_US: makes a link, sends one end to NAME, and link_sends 1..COUNT
// on the other, at most four waiting at once, PAUSE_US apart; every tenth is cancelled right
// after its send (a cancel either succeeds, and that number never arrives, or finds it matched).
// Then a last message (id 2). Prints the count and sum of the cancelled ones.
int LinkSender(const Channel& channel, const std::string& name, std::uint32_t count,
               long pause_us) {
  const std::uint32_t end = HandLinkEnd(channel, name);
  if (end == 0) return 1;
  std::deque<tern::OpHandle> waiting;
  const auto wait_oldest = [&]() -> bool {
    auto done = channel.wait(waiting.front(), 120s);
    waiting.pop_front();
    return static_cast<bool>(done);
  };
  std::uint64_t cancelled = 0;
  std::uint64_t cancelled_sum = 0;
  for (std::uint32_t i = 1; i <= count; ++i) {
    auto handle = channel.link_send(end, tern::BytesMessage(0, std::to_string(i), 1));
    if (!handle) return Fail("link_send " + std::to_string(i) + ": " + handle.error().ToString());
    if (i % 10 == 0) {
      auto cancel = channel.cancel(*handle);
      if (cancel) {
        ++cancelled;
        cancelled_sum += i;
      } else if (cancel.error().status != tern::ipc::JobStatus::kAlreadyMatched) {
        return Fail("cancel " + std::to_string(i) + ": " + cancel.error().ToString());
      } else if (auto done = channel.wait(*handle, 120s); !done) {
        return Fail("wait for matched " + std::to_string(i) + ": " + done.error().ToString());
      }
    } else {
      waiting.push_back(*handle);
      if (waiting.size() >= 4 && !wait_oldest()) return Fail("wait near " + std::to_string(i));
    }
    if (pause_us > 0) std::this_thread::sleep_for(std::chrono::microseconds(pause_us));
  }
  while (!waiting.empty()) {
    if (!wait_oldest()) return Fail("wait at the end");
  }
  auto last = channel.link_send(end, tern::BytesMessage(0, "end", 2));
  if (!last || !channel.wait(*last, 120s)) return Fail("the last message");
  std::printf("link sent %u, cancelled %llu (sum %llu)\n", count,
              static_cast<unsigned long long>(cancelled),
              static_cast<unsigned long long>(cancelled_sum));
  return 0;
}

// link-echo NAME: takes a link end sent to its inbox NAME and sends back on the link every
// message it receives there, until the client's last one (id 2). Checks that the numbers come
// in order, each once; prints how many, and how many it matched directly.
int LinkEcho(const Channel& channel, const std::string& name) {
  const std::uint32_t end = TakeLinkEnd(channel, name);
  if (end == 0) return 1;
  std::uint64_t last = 0;
  for (;;) {
    auto handle = channel.link_receive(end);
    if (!handle) return Fail("link_receive: " + handle.error().ToString());
    auto got = channel.wait(*handle, 120s);
    if (!got) return Fail("wait after " + std::to_string(last) + ": " + got.error().ToString());
    if (got->message.id == 2) break;
    const std::string bytes(tern::FirstBytes(got->message));
    const std::uint64_t number = std::stoull(bytes);
    if (number != last + 1) {
      return Fail("link message " + std::to_string(number) + " after " + std::to_string(last));
    }
    last = number;
    auto echo = channel.link_send(end, tern::BytesMessage(0, bytes, 1));
    if (!echo) return Fail("echo " + bytes + ": " + echo.error().ToString());
    if (auto done = channel.wait(*echo, 120s); !done) {
      return Fail("echo " + bytes + " not taken: " + done.error().ToString());
    }
  }
  std::printf("echoed %llu in order, each once; %llu direct\n",
              static_cast<unsigned long long>(last),
              static_cast<unsigned long long>(tern::direct_link_matches()));
  return 0;
}

// link-echo-client NAME COUNT PAUSE_US: makes a link, sends one end to NAME, then COUNT times
// link_sends the number i and link_receives its echo, both waited for, PAUSE_US apart: each echo
// must be i. Then a last message (id 2). Prints the count and its direct matches.
int LinkEchoClient(const Channel& channel, const std::string& name, std::uint32_t count,
                   long pause_us) {
  const std::uint32_t end = HandLinkEnd(channel, name);
  if (end == 0) return 1;
  for (std::uint32_t i = 1; i <= count; ++i) {
    const std::string number = std::to_string(i);
    auto sent = channel.link_send(end, tern::BytesMessage(0, number, 1));
    if (!sent) return Fail("link_send " + number + ": " + sent.error().ToString());
    auto echo = channel.link_receive(end);
    if (!echo) return Fail("link_receive " + number + ": " + echo.error().ToString());
    if (auto done = channel.wait(*sent, 120s); !done) {
      return Fail("send " + number + " not taken: " + done.error().ToString());
    }
    auto got = channel.wait(*echo, 120s);
    if (!got) return Fail("no echo of " + number + ": " + got.error().ToString());
    if (tern::FirstBytes(got->message) != number) {
      return Fail("the echo of " + number + " was " + std::string(tern::FirstBytes(got->message)));
    }
    if (pause_us > 0) std::this_thread::sleep_for(std::chrono::microseconds(pause_us));
  }
  auto last = channel.link_send(end, tern::BytesMessage(0, "end", 2));
  if (!last || !channel.wait(*last, 120s)) return Fail("the last message");
  std::printf("exchanged %u, each echo its own; %llu direct\n", count,
              static_cast<unsigned long long>(tern::direct_link_matches()));
  return 0;
}

// A receive right sent to a job on another node; messages then reach that job.
int MoveReceive(const Channel& channel, const std::string& name) {
  auto port = channel.port_allocate();
  auto send = port ? channel.make_send(*port) : tern::IpcResult<std::uint32_t>(port.error());
  const auto to = LookupRetrying(channel, name);
  if (!send || to == 0) return Fail("setup");
  if (!channel.send(tern::MessageBuilder(to)
                        .bytes("take this port")
                        .port(*port, tern::ipc::Disposition::kMoveReceive)
                        .build())) {
    return Fail("send receive right");
  }
  auto mine = channel.receive(*port, 0ms);
  if (!channel.send(tern::BytesMessage(*send, "through the moved port"))) return Fail("send");
  std::printf("receive on the given-away port: %s\n",
              std::string(tern::ipc::JobStatusName(mine.status())).c_str());
  return mine.status() == JobStatus::kInvalidName ? 0 : 1;
}

int MoveReceivePeer(const Channel& channel, const std::string& name) {
  const auto inbox = Inbox(channel, name);
  if (inbox == 0) return Fail("inbox");
  auto message = channel.receive(inbox, 60s);
  if (!message || message->items.size() < 2 ||
      message->items[1].disposition != tern::ipc::Disposition::kMoveReceive) {
    return Fail("no receive right arrived");
  }
  auto through = channel.receive(message->items[1].name, 30s);
  if (!through) return Fail("receive on the moved port: " + through.error().ToString());
  std::printf("got \"%s\" on the port it was given\n",
              std::string(tern::FirstBytes(*through)).c_str());
  return 0;
}

// The receiver learns when the last send right (held by a job on another node) is gone.
int NoSendersServer(const Channel& channel, const std::string& name) {
  auto port = channel.port_allocate();
  auto notify = channel.port_allocate();
  auto send = port ? channel.make_send(*port) : tern::IpcResult<std::uint32_t>(port.error());
  if (!send || !notify) return Fail("setup");
  if (!channel.request_notification(*port, tern::ipc::NotificationKind::kNoSenders, *notify) ||
      !channel.name_register(name, *send) || !channel.deallocate(*send)) {
    return Fail("register");
  }
  auto hello = channel.receive(*port, 60s);  // the client holds its right now
  if (!hello) return Fail("no client");
  (void)channel.name_unregister(name);
  auto early = channel.receive(*notify, 0ms);
  std::printf("while the client lives: %s\n",
              std::string(tern::ipc::JobStatusName(early.status())).c_str());
  std::fflush(stdout);
  auto note = channel.receive(*notify, 60s);
  const bool got = note && note->id == tern::ipc::kNoSendersNotification;
  std::printf("no-senders: %s\n", got ? "yes" : "no");
  return got && early.status() == JobStatus::kTimedOut ? 0 : 1;
}

int NoSendersClient(const Channel& channel, const std::string& name) {
  const auto to = LookupRetrying(channel, name);
  if (to == 0 || !channel.send(tern::BytesMessage(to, "hello"))) return Fail("hello");
  std::this_thread::sleep_for(1s);
  std::printf("client leaves\n");
  return 0;  // exiting releases the send right
}

// The job's direct call connections: its TCP sockets in state ESTABLISHED (a job has no
// others), and on one node its connected Unix stream sockets but the channel to its agent
// (TERN_IPC_FD): the agents hand two jobs on one node a Unix socket pair.
std::vector<int> DirectConnections() {
  const char* channel_env = std::getenv("TERN_IPC_FD");
  const int channel = channel_env != nullptr ? std::atoi(channel_env) : 3;
  std::vector<int> fds;
  for (int fd = 3; fd < 1024; ++fd) {
    int domain = 0, type = 0;
    socklen_t length = sizeof domain;
    if (fd == channel || ::getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &length) != 0) continue;
    length = sizeof type;
    if (::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &length) != 0 || type != SOCK_STREAM) {
      continue;
    }
    if (domain == AF_UNIX) {
      sockaddr_un peer{};
      length = sizeof peer;
      if (::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &length) == 0) fds.push_back(fd);
      continue;
    }
    if (domain != AF_INET && domain != AF_INET6) continue;
    tcp_info info{};
    length = sizeof info;
    if (::getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &length) == 0 &&
        info.tcpi_state == TCP_ESTABLISHED) {
      fds.push_back(fd);
    }
  }
  return fds;
}

// Calls a server (which go straight to it), then gives its send right up and, like a job that
// would keep what it was given, tries its direct connection anyway: the agent must have shut
// it down, so nothing it writes reaches the server.
int DirectRevoked(const Channel& channel, const std::string& name) {
  const auto to = LookupRetrying(channel, name);
  if (to == 0) return Fail("lookup");
  for (int i = 0; i < 5; ++i) {
    auto reply = channel.call(to, "before");
    if (!reply) return Fail("call: " + reply.error().ToString());
  }
  const auto direct = DirectConnections();
  std::printf("direct connections: %zu\n", direct.size());
  if (direct.empty()) return Fail("the calls did not go straight to the server");
  auto info = channel.right_info(to);
  if (!info) return Fail("right_info");
  for (std::uint32_t ref = 0; ref < info->refs; ++ref) {
    if (!channel.deallocate(to)) return Fail("deallocate");
  }
  // End of file on every one of them (the agent shut them down), within 3 s.
  const auto deadline = std::chrono::steady_clock::now() + 3s;
  for (int fd : direct) {
    for (;;) {
      char byte;
      const ssize_t got = ::recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
      if (got == 0 || (got < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) break;
      if (std::chrono::steady_clock::now() > deadline) return Fail("still open after 3 s");
      std::this_thread::sleep_for(10ms);
    }
    // A request written by hand (DirectCall, kind 1, no items) must not be answered.
    unsigned char frame[6 + 21] = {0, 0, 0, 21, 0, 40, 1};
    const ssize_t put = ::send(fd, frame, sizeof frame, MSG_NOSIGNAL);
    char answer[64];
    pollfd wait{fd, POLLIN, 0};
    const bool answered =
        ::poll(&wait, 1, 500) == 1 && ::recv(fd, answer, sizeof answer, MSG_DONTWAIT) > 0;
    if (answered) return Fail("a request on a revoked connection was answered");
    std::printf("revoked connection: write %s, no answer\n", put < 0 ? "refused" : "lost");
  }
  auto after = channel.call(to, "after");
  std::printf("call after giving the right up: %s\n",
              std::string(tern::ipc::JobStatusName(after.status())).c_str());
  return after.status() == JobStatus::kInvalidName ? 0 : 1;
}

// A hand-written request (DirectCall, kind 1, no items) on `fd`: whether it is answered.
bool AnsweredByHand(int fd) {
  unsigned char frame[6 + 21] = {0, 0, 0, 21, 0, 40, 1};
  (void)::send(fd, frame, sizeof frame, MSG_NOSIGNAL);
  char answer[64];
  pollfd wait{fd, POLLIN, 0};
  return ::poll(&wait, 1, 1000) == 1 && ::recv(fd, answer, sizeof answer, MSG_DONTWAIT) > 0;
}

// One byte with room for one fd (SCM_RIGHTS) beside it.
struct FdMessage {
  char byte = 'x';
  iovec iov{&byte, 1};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr header{nullptr, 0, &iov, 1, control, sizeof control, 0};
  FdMessage() = default;
  FdMessage(const FdMessage&) = delete;
  FdMessage& operator=(const FdMessage&) = delete;
};

// The abstract Unix socket a smuggler hands its direct connection over (jobs on one node share
// its network namespace, hence its abstract sockets).
sockaddr_un SmugglerAddress(const std::string& name) {
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  const std::string path = "tern-probe-smuggle-" + name;
  std::memcpy(address.sun_path + 1, path.data(),
              std::min(path.size(), sizeof address.sun_path - 2));
  return address;
}

// Calls a server (directly), hands its direct connection to a process outside its job (a
// "fence"), gives its send right up and exits: the fence must be left with a dead connection.
int DirectSmuggler(const Channel& channel, const std::string& name) {
  const auto to = LookupRetrying(channel, name);
  if (to == 0) return Fail("lookup");
  for (int i = 0; i < 5; ++i) {
    if (!channel.call(to, "before")) return Fail("call");
  }
  const auto direct = DirectConnections();
  if (direct.size() != 1) return Fail("expected one direct connection");
  const int out = ::socket(AF_UNIX, SOCK_STREAM, 0);
  const sockaddr_un address = SmugglerAddress(name);
  bool connected = false;
  for (int i = 0; i < 100 && !connected; ++i) {
    connected = ::connect(out, reinterpret_cast<const sockaddr*>(&address), sizeof address) == 0;
    if (!connected) std::this_thread::sleep_for(50ms);
  }
  if (!connected) return Fail("no fence");
  FdMessage message;
  cmsghdr* header = CMSG_FIRSTHDR(&message.header);
  header->cmsg_level = SOL_SOCKET;
  header->cmsg_type = SCM_RIGHTS;
  header->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(header), &direct[0], sizeof(int));
  if (::sendmsg(out, &message.header, 0) != 1) return Fail("hand over");
  ::close(direct[0]);
  auto info = channel.right_info(to);
  for (std::uint32_t ref = 0; info && ref < info->refs; ++ref) (void)channel.deallocate(to);
  std::printf("handed over and gave the right up\n");
  return 0;
}

// Takes a smuggled direct connection and, once the smuggler gave its right up, tries it.
int DirectFence(const std::string& name) {
  const int listener = ::socket(AF_UNIX, SOCK_STREAM, 0);
  const sockaddr_un address = SmugglerAddress(name);
  if (::bind(listener, reinterpret_cast<const sockaddr*>(&address), sizeof address) != 0 ||
      ::listen(listener, 1) != 0) {
    return Fail("listen");
  }
  std::printf("fence ready\n");
  std::fflush(stdout);
  const int in = ::accept(listener, nullptr, nullptr);
  FdMessage message;
  if (in < 0 || ::recvmsg(in, &message.header, 0) != 1 ||
      CMSG_FIRSTHDR(&message.header) == nullptr) {
    return Fail("no connection came");
  }
  int fd = -1;
  std::memcpy(&fd, CMSG_DATA(CMSG_FIRSTHDR(&message.header)), sizeof fd);
  // The smuggler gives its right up right after the hand-over.
  std::this_thread::sleep_for(1s);
  const bool answered = AnsweredByHand(fd);
  std::printf("smuggled connection: %s\n", answered ? "answered" : "dead");
  return answered ? 1 : 0;
}

// send_receive against a summing RpcServer (tern-example-rpc-server) COUNT times, PAUSE_MS
// apart: each message "i 1000000" on a send right, with a send-once reply right to a port of
// its own, once (10 s to answer, no retry). Prints how many came back with their own sum.
int SendReceiveClient(const Channel& channel, const std::string& name, long count, long pause_ms) {
  const auto to = LookupRetrying(channel, name);
  auto inbox = channel.port_allocate();
  if (to == 0 || !inbox) return Fail("setup");
  long ok = 0;
  long failed = 0;
  std::string first_error;
  for (long i = 0; i < count; ++i) {
    const auto message =
        tern::MessageBuilder(to).id(7).bytes(std::to_string(i) + " 1000000").reply(*inbox).build();
    auto reply = channel.send_receive(message, *inbox, 10s, tern::ipc::FullPolicy::kWait, 10s);
    if (reply && reply->id == 7 && tern::FirstBytes(*reply) == std::to_string(i + 1000000)) {
      ++ok;
    } else {
      ++failed;
      if (first_error.empty()) {
        first_error = reply ? "wrong reply \"" + std::string(tern::FirstBytes(*reply)) + "\""
                            : reply.error().ToString();
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(pause_ms));
  }
  std::printf("%ld exchanges ok, %ld failed%s%s\n", ok, failed, first_error.empty() ? "" : ": ",
              first_error.c_str());
  return failed == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: tern-ipc-probe MODE [NAME] (see the source for the modes)\n");
    return 2;
  }
  const std::string mode = argv[1];
  const std::string name = argc > 2 ? argv[2] : "probe";
  Channel channel;
  int code = 2;
  if (mode == "owner") code = Owner(channel, name);
  if (mode == "holder") code = Holder(channel, name, argc > 3 ? std::atoi(argv[3]) : 50);
  if (mode == "queue-sender") code = QueueSender(channel, name, argc > 3 ? std::atoi(argv[3]) : 50);
  if (mode == "poke") code = Poke(channel, std::vector<std::string>(argv + 2, argv + argc));
  if (mode == "forger") code = Forger(channel, name);
  if (mode == "squatter") code = Squatter(channel, name);
  if (mode == "queue") code = Queue(channel);
  if (mode == "watcher") code = Watcher(channel, name);
  if (mode == "linkcancel") code = LinkCancel(channel);
  if (mode == "link-receiver") code = LinkReceiver(channel, name);
  if (mode == "link-sender") {
    code =
        LinkSender(channel, name, argc > 3 ? static_cast<std::uint32_t>(std::stoul(argv[3])) : 1000,
                   argc > 4 ? std::stol(argv[4]) : 0);
  }
  if (mode == "link-echo") code = LinkEcho(channel, name);
  if (mode == "link-echo-client") {
    code = LinkEchoClient(channel, name,
                          argc > 3 ? static_cast<std::uint32_t>(std::stoul(argv[3])) : 1000,
                          argc > 4 ? std::stol(argv[4]) : 0);
  }
  if (mode == "region-shared") code = RegionOwner(channel, name, true);
  if (mode == "region-copied") code = RegionOwner(channel, name, false);
  if (mode == "region-peer") code = RegionPeer(channel, name);
  // ool-client / ool-server NAME [MIB]: one out-of-line item of MIB MiB (20 by default).
  const std::size_t ool_bytes = (argc > 3 ? std::stoul(argv[3]) : 20u) << 20;
  if (mode == "ool-client") code = OolClient(channel, name, ool_bytes);
  if (mode == "ool-server") code = OolServer(channel, name, ool_bytes);
  if (mode == "move-receive") code = MoveReceive(channel, name);
  if (mode == "stream-writer") code = StreamWriter(channel, name);
  if (mode == "stream-reader") code = StreamReader(channel, name);
  // bulk-writer-agents: the same stream kept on the agents (no direct connection).
  if (mode == "bulk-writer" || mode == "bulk-writer-agents") {
    code = BulkWriter(channel, name, mode == "bulk-writer");
  }
  // bulk-reader-agents: a reader that never accepts direct traffic.
  if (mode == "bulk-reader" || mode == "bulk-reader-agents") {
    code = BulkReader(channel, name, mode == "bulk-reader");
  }
  if (mode == "move-receive-peer") code = MoveReceivePeer(channel, name);
  if (mode == "nosenders-server") code = NoSendersServer(channel, name);
  if (mode == "nosenders-client") code = NoSendersClient(channel, name);
  if (mode == "direct-revoked") code = DirectRevoked(channel, name);
  if (mode == "direct-smuggler") code = DirectSmuggler(channel, name);
  if (mode == "direct-fence") code = DirectFence(name);
  const bool counted = mode == "dstream-writer" || mode == "dstream-reader" ||
                       mode == "plain-reader" || mode == "plain-writer";
  const std::uint32_t count =
      counted && argc > 3 ? static_cast<std::uint32_t>(std::stoul(argv[3])) : 1000;
  if (mode == "dstream-writer") {
    code =
        DirectStreamWriter(channel, name, count, argc > 4 ? std::stol(argv[4]) : 0,
                           argc > 6 ? std::stol(argv[5]) : -1, argc > 6 ? std::stol(argv[6]) : 0);
  }
  if (mode == "plain-writer") {
    code = PlainWriter(channel, name, count, argc > 4 ? std::stol(argv[4]) : 0);
  }
  if (mode == "dstream-reader") code = DirectStreamReader(channel, name, count, false);
  if (mode == "plain-reader") code = DirectStreamReader(channel, name, count, true);
  // sendrecv-client NAME COUNT PAUSE_MS
  if (mode == "sendrecv-client") {
    code = SendReceiveClient(channel, name, argc > 3 ? std::stol(argv[3]) : 100,
                             argc > 4 ? std::stol(argv[4]) : 0);
  }
  std::fflush(stdout);
  return code;
}
