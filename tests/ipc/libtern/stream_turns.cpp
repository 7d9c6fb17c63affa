// tern-libtern-stream-turns: the CPU a same-node direct stream costs per message, both sides
// together, without a scheduler in the figure (docs/ipc.md "Shared memory on one node", bench/
// README.md, eleventh session).
//
//   tern-libtern-stream-turns [tern|raw] [--turns N] [--size S] [--limit Q]
//
// tern: a PortWriter and a PortReader on one port of a fake agent (fake_agent.hpp), the stream
// through the shared-memory rings, driven from one thread in turns, as the two jobs of
// bench/ipc's same-node stream run on a loaded machine (both on one CPU, taking turns): the
// writer writes Q messages (the port's queue limit, its credits: one frame), then the reader
// hands out all it can without waiting and acks (its next() with a zero timeout). raw: the
// baseline of bench/ipc/raw.cpp's `stream` in the same turns: 64 KiB batches of
// [u32 length][payload] written to a Unix socket pair, read into a 256 KiB buffer and parsed in
// place. Prints ns per message of the measured turns. Under `valgrind --tool=callgrind
// --toggle-collect='*MeasuredTurns*'` the instruction counts of those turns (inclusive, per
// side: PortWriter::write vs PortReader::next) are the deterministic figure.
//
// Thread-safety: a single-threaded program (the fake agent has its own thread).
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <tern/big_endian.hpp>
#include <tern/ipc.hpp>
#include <thread>
#include <vector>

#include "fake_agent.hpp"

namespace tern {
namespace {

using Clock = std::chrono::steady_clock;

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "stream-turns: %s\n", what.c_str());
  std::exit(1);
}

struct Options {
  std::string mode = "tern";
  std::uint64_t turns = 2000;
  std::size_t size = 64;
  std::uint32_t limit = 1000;
};

// The reader's side of a turn: everything that came, handed out; returns how many.
std::uint64_t Drain(PortReader& reader, MessageView& message, std::size_t size) {
  std::uint64_t n = 0;
  for (;;) {
    auto next = reader.next(message, Timeout(0));
    if (!next) {
      if (next.status() == JobStatus::kTimedOut) return n;
      Die("next: " + next.error().ToString());
    }
    if (message.bytes().size() != size) Die("a message of the wrong size");
    ++n;
  }
}

[[gnu::noinline]] std::uint64_t MeasuredTurns(PortWriter& writer, PortReader& reader,
                                              const Message& data, const Options& options) {
  MessageView message;
  std::uint64_t handed = 0;
  for (std::uint64_t turn = 0; turn < options.turns; ++turn) {
    for (std::uint32_t i = 0; i < options.limit; ++i) {
      if (auto written = writer.write(data); !written) {
        Die("write: " + written.error().ToString());
      }
    }
    handed += Drain(reader, message, options.size);
  }
  return handed;
}

int RunTern(const Options& options) {
  testing::FakeAgent agent;
  Channel channel = Channel::FromFd(agent.TakeJobFd());
  auto port = channel.port_allocate(options.limit);
  if (!port) Die("port_allocate");
  auto send_right = channel.make_send(*port);
  if (!send_right) Die("make_send");
  PortReader reader(channel, *port, PortReader::Options{.batch = 1024, .direct = true});
  MessageView message;
  (void)reader.next(message, Timeout(20));  // opts in: the port takes connections
  while (agent.requests_with_op(ipc::JobOp::kDirectAccept) == 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  const Message data =
      MessageBuilder(*send_right).id(1).bytes(std::string(options.size, 'x')).build();
  PortWriter writer(channel, *send_right);
  // Until the stream goes through shared memory: small turns through the agents (the queue
  // holds them), each waited for.
  std::uint64_t written = 0, handed = 0;
  const auto warm_until = Clock::now() + std::chrono::seconds(20);
  while (reader.handed_shared() == 0) {
    if (Clock::now() > warm_until) Die("the stream never went through shared memory");
    const std::uint32_t n = options.limit / 4;
    for (std::uint32_t i = 0; i < n; ++i, ++written) {
      if (!writer.write(data)) Die("write (warm-up)");
    }
    for (;;) {
      auto next = reader.next(message, Timeout(30));
      if (!next) break;
      ++handed;
    }
  }
  // Whole turns from here on (the frame in the making is finished by the first turn).
  const std::uint64_t before = reader.handed_shared();
  const auto start = Clock::now();
  handed = MeasuredTurns(writer, reader, data, options);
  const auto elapsed = Clock::now() - start;
  const std::uint64_t shared = reader.handed_shared() - before;
  std::printf("tern: %llu messages in %llu turns, %llu through shared memory, %.1f ns each\n",
              static_cast<unsigned long long>(handed),
              static_cast<unsigned long long>(options.turns),
              static_cast<unsigned long long>(shared),
              std::chrono::duration<double, std::nano>(elapsed).count() /
                  static_cast<double>(handed ? handed : 1));
  if (shared + options.limit < options.turns * options.limit) Die("not through shared memory");
  // The writer's destructor would wait for the reader to take its last frame, in this thread.
  std::fflush(stdout);
  std::_Exit(0);
}

// The raw baseline's turns (bench/ipc/raw.cpp `stream`).
[[gnu::noinline]] std::uint64_t MeasuredRawTurns(int out, int in, const Options& options) {
  constexpr std::size_t kBatch = 64 * 1024, kRead = 256 * 1024;
  const std::string payload(options.size, 'x');
  std::string batch;
  batch.reserve(kBatch);
  std::vector<char> buffer(kRead);
  std::size_t used = 0;
  std::uint64_t handed = 0;
  for (std::uint64_t turn = 0; turn < options.turns; ++turn) {
    for (std::uint32_t i = 0; i < options.limit; ++i) {
      if (batch.size() + 4 + payload.size() > kBatch) {
        if (::write(out, batch.data(), batch.size()) != static_cast<ssize_t>(batch.size())) {
          Die("write");
        }
        batch.clear();
      }
      char header[4];
      const std::uint32_t length = BigEndian(static_cast<std::uint32_t>(payload.size()));
      std::memcpy(header, &length, 4);
      batch.append(header, 4);
      batch.append(payload);
    }
    for (;;) {
      const ssize_t n = ::recv(in, buffer.data() + used, buffer.size() - used, MSG_DONTWAIT);
      if (n <= 0) break;
      used += static_cast<std::size_t>(n);
      std::size_t at = 0;
      while (used - at >= 4) {
        const auto length = LoadBigEndian<std::uint32_t>(buffer.data() + at);
        if (used - at - 4 < length) break;
        if (length != options.size) Die("a message of the wrong size");
        ++handed;
        at += 4 + length;
      }
      std::memmove(buffer.data(), buffer.data() + at, used - at);
      used -= at;
    }
  }
  return handed;
}

int RunRaw(const Options& options) {
  int ends[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM, 0, ends) != 0) Die("socketpair");
  const auto start = Clock::now();
  const std::uint64_t handed = MeasuredRawTurns(ends[0], ends[1], options);
  const auto elapsed = Clock::now() - start;
  std::printf("raw: %llu messages in %llu turns, %.1f ns each\n",
              static_cast<unsigned long long>(handed),
              static_cast<unsigned long long>(options.turns),
              std::chrono::duration<double, std::nano>(elapsed).count() /
                  static_cast<double>(handed ? handed : 1));
  ::close(ends[0]);
  ::close(ends[1]);
  return 0;
}

}  // namespace
}  // namespace tern

int main(int argc, char** argv) {
  tern::Options options;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    const auto value = [&] {
      if (i + 1 >= argc) tern::Die("missing value after " + std::string(arg));
      return std::strtoull(argv[++i], nullptr, 10);
    };
    if (arg == "--turns") {
      options.turns = value();
    } else if (arg == "--size") {
      options.size = value();
    } else if (arg == "--limit") {
      options.limit = static_cast<std::uint32_t>(value());
    } else if (arg == "tern" || arg == "raw") {
      options.mode = arg;
    } else {
      tern::Die("usage: tern-libtern-stream-turns [tern|raw] [--turns N] [--size S] [--limit Q]");
    }
  }
  return options.mode == "raw" ? tern::RunRaw(options) : tern::RunTern(options);
}
