// tern-bench-ipc-move: a stream whose receiver is moved while it runs (bench/ipc/run's
// move_4k row): throughput, the longest stall, and every message accounted for.
//
//   tern-bench-ipc-move server move --name NAME [--size S] [--queue Q] [--count CAP]
//   tern-bench-ipc-move client move --name NAME [--size S] [--count CAP] [--seconds T]
//       [--window W] [--train-bytes B] [--label L] [--direct 0|1] [--plain 0|1]
//
// Both ends run as tern jobs; bench/ipc/run moves the server (the reader) while the client
// writes. The server registers NAME on a port of queue limit --queue and reads with a
// PortReader. The client writes numbered messages of --size bytes with a PortWriter for
// --seconds (at most --count of them), flushes, then sends an end marker carrying the number
// written and a make-send-once reply right; the server answers it with its account as JSON and
// ends, and the client prints one JSON line on stdout: messages written, received, lost,
// duplicated and reordered (by their numbers, with no retry anywhere that could hide a loss),
// the messages per second over the whole stream, and the longest gap between two arrivals at
// the reader (the stall a move costs the stream), measured on the node's monotonic clock, which
// a job moved within one machine keeps. With --direct 1 (the default) both ends ask for a
// direct stream (docs/ipc.md "Direct streams"), which falls back to the agents while the reader
// moves and comes back after; --direct 0 keeps the stream on the agents. With --plain 1 the
// client sends each message with Channel::send (kWait) instead of a PortWriter (docs/ipc.md
// "Plain sends direct"): the move_send_4k row.
//
// Exit status: 0 done (whatever the account says: the driver judges it), 1 failed, 3 tern IPC
// is not available here.
#include <cstring>
#include <string>
#include <string_view>
#include <tern/ipc.hpp>
#include <thread>
#include <vector>

#include "common.hpp"
#include "tern_steps.hpp"

namespace tern::bench {

const char* const kProgram = "tern-bench-ipc-move";

namespace {

constexpr std::string_view kUsage =
    "tern-bench-ipc-move {server,client} move --name NAME [--size S] [--count CAP] "
    "[--seconds T] [--queue Q] [--window W] [--train-bytes B] [--label L] [--direct 0|1]";
constexpr std::uint32_t kDataId = 1;
constexpr std::uint32_t kEndId = 2;
// A move freezes the reader for a second or two; the writer's flush and the reader's next()
// wait through it, but not for ever.
constexpr auto kStepTimeout = std::chrono::seconds(120);

std::uint64_t LoadNumber(std::string_view bytes) {
  std::uint64_t value = 0;
  std::memcpy(&value, bytes.data(), sizeof value);
  return value;
}

// What the reader saw, by message number.
class Account {
 public:
  explicit Account(std::uint64_t cap) : cap_(cap) {}

  void Arrived(std::uint64_t number, Clock::time_point at) {
    if (received_ > 0) longest_gap_ = std::max(longest_gap_, at - last_arrival_);
    last_arrival_ = at;
    ++received_;
    if (number >= cap_) {
      ++out_of_range_;
      return;
    }
    if (number >= seen_.size()) seen_.resize(number + 1, false);
    if (seen_[number]) {
      ++duplicated_;
      return;
    }
    seen_[number] = true;
    ++distinct_;
    if (distinct_ > 1 && number < highest_) ++reordered_;
    highest_ = std::max(highest_, number);
  }

  std::string Json(std::uint64_t written, std::uint64_t direct, std::uint64_t shared) const {
    const std::uint64_t lost = written > distinct_ ? written - distinct_ : 0;
    char text[512];
    std::snprintf(text, sizeof text,
                  "\"received\":%llu,\"lost\":%llu,\"duplicated\":%llu,\"reordered\":%llu,"
                  "\"out_of_range\":%llu,\"direct\":%llu,\"shared\":%llu,\"longest_stall_ms\":%.1f",
                  static_cast<unsigned long long>(received_), static_cast<unsigned long long>(lost),
                  static_cast<unsigned long long>(duplicated_),
                  static_cast<unsigned long long>(reordered_),
                  static_cast<unsigned long long>(out_of_range_),
                  static_cast<unsigned long long>(direct), static_cast<unsigned long long>(shared),
                  std::chrono::duration<double, std::milli>(longest_gap_).count());
    return text;
  }

 private:
  std::uint64_t cap_;
  std::vector<bool> seen_;
  std::uint64_t received_ = 0, distinct_ = 0, duplicated_ = 0, reordered_ = 0, out_of_range_ = 0;
  std::uint64_t highest_ = 0;
  Clock::time_point last_arrival_{};
  Clock::duration longest_gap_{};
};

int Server(const Options& options) {
  const Channel channel;
  const std::uint32_t port = Check(channel.port_allocate(options.queue), "port_allocate");
  Check(channel.name_register(options.name, port), "name_register");
  PortReader reader(channel, port, PortReader::Options{.batch = 1024, .direct = options.direct});
  Account account(options.count);
  MessageView message;
  for (;;) {
    Check(reader.next(message, kStepTimeout), "receive");
    if (message.id == kDataId && message.bytes().size() >= sizeof(std::uint64_t)) {
      account.Arrived(LoadNumber(message.bytes()), Clock::now());
      continue;
    }
    if (message.id != kEndId || message.reply == 0 ||
        message.bytes().size() != sizeof(std::uint64_t)) {
      continue;
    }
    Message answer = BytesMessage(
        message.reply,
        account.Json(LoadNumber(message.bytes()), reader.handed_direct(), reader.handed_shared()));
    answer.destination_disposition = Disposition::kMoveSendOnce;
    Check(channel.send(answer), "send the account");
    // The answer leaves before the job's rights go away with it.
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    return 0;
  }
}

int Client(const Options& options, double seconds, bool plain) {
  const Channel channel;
  const std::uint32_t port = Lookup(channel, options.name);
  const std::uint32_t inbox = Check(channel.port_allocate(), "port_allocate");
  std::string payload(std::max<std::size_t>(options.size, sizeof(std::uint64_t)), 'x');
  PortWriter::Options writer_options;
  if (options.window != 0) writer_options.window = options.window;
  if (options.train_bytes != 0) writer_options.train_bytes = options.train_bytes;
  writer_options.direct = options.direct;
  const auto start = Clock::now();
  const auto stop =
      start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  std::uint64_t written = 0;
  if (plain) {
    // One Channel::send a message (docs/ipc.md "Plain sends direct"), each waiting for room.
    while (written < options.count && (written % 64 != 0 || Clock::now() < stop)) {
      std::memcpy(payload.data(), &written, sizeof written);
      Check(channel.send(BytesMessage(port, payload, kDataId), FullPolicy::kWait, kForever),
            "send");
      ++written;
    }
  } else {
    PortWriter writer(channel, port, writer_options);
    // The clock is read once per 64 messages: a call per message would cost 64 B streams.
    while (written < options.count && (written % 64 != 0 || Clock::now() < stop)) {
      std::memcpy(payload.data(), &written, sizeof written);
      Check(writer.write(payload, kDataId), "write");
      ++written;
    }
    Check(writer.flush(), "flush");
  }
  std::string end(sizeof written, '\0');
  std::memcpy(end.data(), &written, sizeof written);
  Check(channel.send(MessageBuilder(port).id(kEndId).bytes(end).reply(inbox).build(),
                     FullPolicy::kWait, kForever),
        "send the end marker");
  const Message account = Check(channel.receive(inbox, kStepTimeout), "receive the account");
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  std::printf(
      "{\"path\":\"tern\",\"label\":\"%s\",\"op\":\"move\",\"size\":%zu,\"written\":%llu,"
      "\"seconds\":%.6f,\"msgs_per_s\":%.1f,\"mb_per_s\":%.2f,%s}\n",
      options.label.c_str(), options.size, static_cast<unsigned long long>(written), elapsed,
      static_cast<double>(written) / elapsed,
      static_cast<double>(written) * static_cast<double>(options.size) / elapsed / 1e6,
      std::string(FirstBytes(account)).c_str());
  std::fflush(stdout);
  return 0;
}

int Main(int argc, char** argv) {
  // --seconds and --plain are this program's own; the rest are the bench's common options.
  double seconds = 8;
  bool plain = false;
  std::vector<char*> rest;
  for (int i = 0; i < argc; ++i) {
    if (std::string_view(argv[i]) == "--seconds" && i + 1 < argc) {
      seconds = std::strtod(argv[++i], nullptr);
      if (!(seconds > 0 && seconds <= 600)) Die("--seconds is between 0 and 600");
      continue;
    }
    if (std::string_view(argv[i]) == "--plain" && i + 1 < argc) {
      plain = std::string_view(argv[++i]) == "1";
      continue;
    }
    rest.push_back(argv[i]);
  }
  Options options = ParseOptions(static_cast<int>(rest.size()), rest.data(), kUsage);
  if (options.op != "move") Die("the operation is move; usage: " + std::string(kUsage));
  if (options.mode == "server") return Server(options);
  if (options.mode == "client") return Client(options, seconds, plain);
  Die("unknown mode " + options.mode + "; usage: " + std::string(kUsage));
}

}  // namespace
}  // namespace tern::bench

int main(int argc, char** argv) { return tern::bench::Main(argc, argv); }
