// tern-bench-ipc-tern: the tern path of bench/ipc, two tern jobs talking through libtern.
//
//   tern-bench-ipc-tern {server,client}
//   {pingpong,stream,send,sendrecv,sendrecv-agents,link,link-agents} [--name NAME]
//   [--size S]
//       [--count N] [--warmup W] [--queue Q] [--label L] [--window W] [--train-bytes B]
//       [--direct 0|1]
//
// Both ends run as jobs (`tern submit --node nodeK -- tern-bench-ipc-tern ...`); the server
// serves exactly one run with the same OP, --size, --count and --warmup as its client, and the
// client prints one JSON line on stdout (read with `tern logs`).
//
//   server: port_allocate (stream: queue limit --queue, default 1000, like ZeroMQ's high-water
//     mark), name_register(NAME), then
//       pingpong: an RpcServer (one thread, implicit acknowledgements) whose handler echoes the
//         request: each round trip is one receive and one reply on the send-once reply right;
//       stream: a PortReader (receive_many batches read in place, and the direct connections of
//         the writers: docs/ipc.md "Direct streams"; --direct 0: the agents only) takes the
//         --warmup and --count data messages; after each batch the client sends an end marker
//         carrying a make-send-once reply right, answered at once.
//       sendrecv: the pingpong server (an RpcServer serves a plain message with a reply right
//         too, and takes it over the direct connection when it can);
//       sendrecv-agents: a plain receiver (send_receive of each reply with the next receive,
//         as MIG servers do), which takes no direct traffic: every message crosses the agents;
//       link, link-agents: receives a link end from the client on its port, then echoes each
//         link message on the link (link_receive, wait; link_send, wait) until "bye";
//   client: name_lookup(NAME) (retried until the server has registered it), then
//       pingpong: call(port, 64 bytes) --warmup + --count times, each timed;
//       sendrecv, sendrecv-agents: send_receive of a --size message with a make-send-once
//         reply right to a port of its own, on which it receives the echo; each timed;
//       link, link-agents: link_create, one end sent to the server, then per round trip a
//         link_send of a --size message and a link_receive of the echo, both waited for; link
//         goes direct (docs/ipc.md "Link operations direct"), link-agents sets
//         TERN_IPC_DIRECT_LINKS=0 in both jobs: every operation is decided at the link's home;
//       stream: a PortWriter (trains of messages, up to 8 on their way at once, or frames on
//         the direct connection to the reader; a full queue or window holds the sender back,
//         nothing is dropped; one writer for the warmup and the measured batch), flushed,
//         then the end marker and a receive() of its answer on a port of its own: the
//         clock covers delivery of every message. Messages up to 64 KiB carry one bytes item,
//         larger ones one out-of-line item (the agents share its buffer instead of copying).
//       send: the stream's messages each with one Channel::send (kWait) instead of a PortWriter
//         (to the stream server: plain sends go direct to a PortReader, docs/ipc.md "Plain sends
//         direct"), then the end marker and its confirmation.
// Exit status: 0 done, 1 failed, 3 tern IPC is not available here (the reason on stderr).
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <tern/ipc.hpp>
#include <thread>
#include <utility>
#include <vector>

#include "common.hpp"
#include "tern_steps.hpp"

namespace tern::bench {

const char* const kProgram = "tern-bench-ipc-tern";

namespace {

constexpr std::string_view kUsage =
    "tern-bench-ipc-tern {server,client} "
    "{pingpong,stream,send,sendrecv,sendrecv-agents,link,link-agents} "
    "[--name NAME] "
    "[--size S] [--count N] "
    "[--warmup W] [--queue Q] [--label L] [--window W] [--train-bytes B] [--direct 0|1]";
constexpr std::uint32_t kDataId = 1;
constexpr std::uint32_t kEndId = 2;
constexpr std::size_t kInlineLimit = 64 * 1024;
constexpr auto kStepTimeout = std::chrono::seconds(60);

void PingPongServer(const Channel& channel, std::uint32_t port) {
  std::atomic<bool> bye = false;
  RpcServerOptions server_options;
  server_options.threads = 1;
  server_options.ack = RpcAck::kImplicit;
  RpcServer server(
      channel, port,
      [&bye](const RpcRequest& request) {
        if (request.bytes() == "bye") bye = true;
        return std::vector<Item>{Item::Bytes(std::string(request.bytes()))};
      },
      server_options);
  const auto deadline = Clock::now() + std::chrono::minutes(10);
  while (!bye && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  // Give the reply to "bye" time to leave before the job's rights go away with it.
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  server.stop();
  if (!bye) Die("no \"bye\" from the client within 10 minutes");
  if (!server.last_error().empty()) {
    std::fprintf(stderr, "tern-bench-ipc-tern: server: %s\n", server.last_error().c_str());
  }
}

void StreamServer(const Channel& channel, const Options& options, std::uint32_t port) {
  // Everything queued in one round trip to the agent, read in place; the writer's connection.
  PortReader reader(channel, port, PortReader::Options{.batch = 1024, .direct = options.direct});
  MessageView message;
  for (const std::uint64_t n : {options.warmup, options.count}) {
    std::uint64_t received = 0;
    for (;;) {
      Check(reader.next(message, kStepTimeout), "receive");
      if (message.id == kDataId) {
        if (message.bytes().size() != options.size) Die("a message of the wrong size arrived");
        ++received;
        continue;
      }
      if (message.id != kEndId || message.reply == 0) continue;
      if (received != n) {
        Die("end marker after " + std::to_string(received) + " of " + std::to_string(n) +
            " messages");
      }
      Message answer = BytesMessage(message.reply, "k");
      answer.destination_disposition = Disposition::kMoveSendOnce;
      Check(channel.send(answer), "send the confirmation");
      break;
    }
  }
}

// A receiver that is not an RpcServer: the reply to each message leaves with the next receive.
void PlainEchoServer(const Channel& channel, std::uint32_t port) {
  std::optional<Message> reply;
  const auto deadline = Clock::now() + std::chrono::minutes(10);
  while (Clock::now() < deadline) {
    auto message = reply ? channel.send_receive(*reply, port, kStepTimeout)
                         : channel.receive(port, kStepTimeout);
    reply.reset();
    Message got = Check(std::move(message), "receive");
    if (got.reply == 0) continue;
    Message answer = BytesMessage(got.reply, std::string(FirstBytes(got)), got.id);
    answer.destination_disposition = got.reply_disposition;
    if (FirstBytes(got) == "bye") {
      Check(channel.send(answer), "send the last reply");
      return;
    }
    reply = std::move(answer);
  }
  Die("no \"bye\" from the client within 10 minutes");
}

bool IsLink(const Options& options) { return options.op == "link" || options.op == "link-agents"; }

// The link's end comes in a message on `port`; each link message goes back on the link.
void LinkEchoServer(const Channel& channel, std::uint32_t port) {
  const Message handoff = Check(channel.receive(port, kStepTimeout), "receive the link end");
  std::uint32_t end = 0;
  for (const Item& item : handoff.items) {
    if (item.kind == ItemKind::kLinkEnd) end = item.name;
  }
  if (end == 0) Die("the client's message carried no link end");
  for (;;) {
    const OpResult got =
        Check(channel.wait(Check(channel.link_receive(end), "link_receive"), kStepTimeout),
              "wait for a link message");
    Message echo = BytesMessage(0, std::string(FirstBytes(got.message)), got.message.id);
    Check(channel.wait(Check(channel.link_send(end, echo), "link_send"), kStepTimeout),
          "wait for the echo's match");
    if (FirstBytes(got.message) == "bye") return;
  }
}

int Server(const Options& options) {
  if (options.op == "link-agents") ::setenv("TERN_IPC_DIRECT_LINKS", "0", 1);
  const Channel channel;
  const std::uint32_t port = Check(
      channel.port_allocate(options.op == "stream" || options.op == "send" ? options.queue : 0),
      "port_allocate");
  Check(channel.name_register(options.name, port), "name_register");
  if (options.op == "pingpong" || options.op == "sendrecv") {
    PingPongServer(channel, port);
  } else if (options.op == "sendrecv-agents") {
    PlainEchoServer(channel, port);
  } else if (IsLink(options)) {
    LinkEchoServer(channel, port);
  } else {
    StreamServer(channel, options, port);
  }
  std::printf("{\"role\":\"server\",\"op\":\"%s\",\"done\":true}\n", options.op.c_str());
  return 0;
}

int Client(const Options& options) {
  if (options.op == "link-agents") ::setenv("TERN_IPC_DIRECT_LINKS", "0", 1);
  const Channel channel;
  const std::uint32_t port = Lookup(channel, options.name);
  const std::string payload(options.size, 'x');
  if (options.op == "pingpong") {
    std::vector<double> samples;
    samples.reserve(options.count);
    for (std::uint64_t i = 0; i < options.warmup + options.count; ++i) {
      const auto start = Clock::now();
      const std::string reply = Check(channel.call(port, payload), "call");
      if (reply.size() != options.size) Die("a reply of the wrong size arrived");
      if (i >= options.warmup) samples.push_back(Micros(Clock::now() - start));
    }
    CallOptions bye_options;
    bye_options.timeout = std::chrono::seconds(5);
    (void)channel.call(port, "bye", bye_options);
    ReportPingPong(options, "tern", std::move(samples));
    return 0;
  }
  if (options.op == "sendrecv" || options.op == "sendrecv-agents") {
    const std::uint32_t inbox = Check(channel.port_allocate(), "port_allocate");
    const Message request = MessageBuilder(port).id(kDataId).bytes(payload).reply(inbox).build();
    std::vector<double> samples;
    samples.reserve(options.count);
    for (std::uint64_t i = 0; i < options.warmup + options.count; ++i) {
      const auto start = Clock::now();
      const Message reply =
          Check(channel.send_receive(request, inbox, kStepTimeout), "send_receive");
      if (FirstBytes(reply).size() != options.size) Die("a reply of the wrong size arrived");
      if (i >= options.warmup) samples.push_back(Micros(Clock::now() - start));
    }
    (void)channel.send_receive(MessageBuilder(port).id(kDataId).bytes("bye").reply(inbox).build(),
                               inbox, std::chrono::seconds(5));
    ReportPingPong(options, "tern", std::move(samples));
    return 0;
  }
  if (IsLink(options)) {
    const LinkEnds ends = Check(channel.link_create(), "link_create");
    Check(channel.send(MessageBuilder(port).id(kDataId).link_end(ends.second).build()),
          "send the link end");
    const Message request = BytesMessage(0, payload, kDataId);
    std::vector<double> samples;
    samples.reserve(options.count);
    for (std::uint64_t i = 0; i < options.warmup + options.count; ++i) {
      const auto start = Clock::now();
      const OpHandle sent = Check(channel.link_send(ends.first, request), "link_send");
      const OpHandle echo = Check(channel.link_receive(ends.first), "link_receive");
      Check(channel.wait(sent, kStepTimeout), "wait for the match");
      const OpResult got = Check(channel.wait(echo, kStepTimeout), "wait for the echo");
      if (FirstBytes(got.message).size() != options.size) Die("an echo of the wrong size came");
      if (i >= options.warmup) samples.push_back(Micros(Clock::now() - start));
    }
    Check(channel.wait(Check(channel.link_send(ends.first, BytesMessage(0, "bye")), "link_send"),
                       kStepTimeout),
          "wait for bye's match");
    (void)channel.wait(Check(channel.link_receive(ends.first), "link_receive"), kStepTimeout);
    ReportPingPong(options, "tern", std::move(samples));
    return 0;
  }
  const std::uint32_t confirmations = Check(channel.port_allocate(), "port_allocate");
  const Message data = options.size <= kInlineLimit
                           ? MessageBuilder(port).id(kDataId).bytes(payload).build()
                           : MessageBuilder(port).id(kDataId).out_of_line(payload).build();
  const Message end = MessageBuilder(port).id(kEndId).reply(confirmations).build();
  Clock::duration elapsed{};
  if (options.op == "send") {
    // One Channel::send a message (docs/ipc.md "Plain sends direct"): the warmup makes the
    // connection, as a raw socket is connected before.
    for (const std::uint64_t n : {options.warmup, options.count}) {
      const auto start = Clock::now();
      for (std::uint64_t i = 0; i < n; ++i) {
        Check(channel.send(data, FullPolicy::kWait, kForever), "send");
      }
      Check(channel.send(end, FullPolicy::kWait, kForever), "send the end marker");
      Check(channel.receive(confirmations, kStepTimeout), "receive the confirmation");
      elapsed = Clock::now() - start;
    }
    ReportStream(options, "tern", elapsed);
    return 0;
  }
  // One PortWriter for the warmup and the measured batch: the warmup also warms its path (the
  // direct connection, once the reader welcomed it), as a raw socket is connected before.
  PortWriter::Options writer_options;
  if (options.window != 0) writer_options.window = options.window;
  if (options.train_bytes != 0) writer_options.train_bytes = options.train_bytes;
  writer_options.direct = options.direct;
  PortWriter writer(channel, port, writer_options);
  for (const std::uint64_t n : {options.warmup, options.count}) {
    const auto start = Clock::now();
    // Trains of messages, several on their way at once, or frames on the direct connection
    // (nothing dropped: a full queue, or a full window, holds the stream back).
    for (std::uint64_t i = 0; i < n; ++i) Check(writer.write(data), "write");
    Check(writer.flush(), "flush");
    Check(channel.send(end, FullPolicy::kWait, kForever), "send the end marker");
    Check(channel.receive(confirmations, kStepTimeout), "receive the confirmation");
    elapsed = Clock::now() - start;
  }
  ReportStream(options, "tern", elapsed);
  return 0;
}

int Main(int argc, char** argv) {
  const Options options = ParseOptions(argc, argv, kUsage);
  if (options.mode == "server") return Server(options);
  if (options.mode == "client") return Client(options);
  Die("unknown mode " + options.mode + "; usage: " + std::string(kUsage));
}

}  // namespace
}  // namespace tern::bench

int main(int argc, char** argv) { return tern::bench::Main(argc, argv); }
