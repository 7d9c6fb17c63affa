// Shared pieces of the IPC benchmark programs (bench/ipc): command-line options, timing,
// statistics and the one JSON line each run prints on stdout.
//
// Thread-safety: everything here is single-threaded.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

namespace tern::bench {

using Clock = std::chrono::steady_clock;

[[noreturn]] inline void Die(const std::string& message) {
  std::fprintf(stderr, "tern-bench-ipc: %s\n", message.c_str());
  std::exit(1);
}

// `PROGRAM MODE OP [--size S] [--count N] [--warmup W] [--host H] [--port P] [--path F]
// [--name NAME] [--queue Q] [--label L]`.
struct Options {
  std::string mode;  // unix-server, tcp-client, ..., server, client
  std::string op;    // pingpong or stream (tern also: sendrecv, sendrecv-agents, link, link-agents,
                     // move)
  std::size_t size = 64;
  std::uint64_t count = 10000;
  std::uint64_t warmup = 0;  // 0: count / 10 (at most 10000)
  std::string host = "127.0.0.1";
  int port = 7400;
  std::string path;             // unix socket or zmq ipc path
  std::string name = "bench";   // tern: the registered service name
  std::string label;            // copied into the JSON line
  std::uint32_t queue = 1000;   // tern stream: the port's queue limit
  std::size_t window = 0;       // tern stream: PortWriter's window (0: libtern's default)
  std::size_t train_bytes = 0;  // tern stream: PortWriter's train size (0: libtern's default)
  bool direct = true;           // tern stream: 0 keeps it on the agents (PortWriter/Reader direct)
};

inline std::uint64_t ParseNumber(std::string_view flag, const char* text) {
  char* end = nullptr;
  const unsigned long long value = std::strtoull(text, &end, 10);
  if (end == text) Die("bad number for " + std::string(flag) + ": " + text);
  std::uint64_t scale = 1;
  if (*end == 'k' || *end == 'K') scale = 1024, ++end;
  if (*end == 'm' || *end == 'M') scale = 1024 * 1024, ++end;
  if (*end != '\0') Die("bad number for " + std::string(flag) + ": " + text);
  return value * scale;
}

inline Options ParseOptions(int argc, char** argv, std::string_view usage) {
  if (argc < 3) Die("usage: " + std::string(usage));
  Options options;
  options.mode = argv[1];
  options.op = argv[2];
  if (options.op != "pingpong" && options.op != "stream" && options.op != "sendrecv" &&
      options.op != "sendrecv-agents" && options.op != "move" && options.op != "send" &&
      options.op != "link" && options.op != "link-agents") {
    Die("the operation is pingpong, stream, send, sendrecv, sendrecv-agents, link, link-agents "
        "or move, not " +
        options.op);
  }
  for (int i = 3; i < argc; ++i) {
    const std::string_view flag = argv[i];
    if (i + 1 >= argc) Die("missing value after " + std::string(flag));
    const char* value = argv[++i];
    if (flag == "--size") {
      options.size = ParseNumber(flag, value);
    } else if (flag == "--count") {
      options.count = ParseNumber(flag, value);
    } else if (flag == "--warmup") {
      options.warmup = ParseNumber(flag, value);
    } else if (flag == "--host") {
      options.host = value;
    } else if (flag == "--port") {
      options.port = static_cast<int>(ParseNumber(flag, value));
    } else if (flag == "--path") {
      options.path = value;
    } else if (flag == "--name") {
      options.name = value;
    } else if (flag == "--label") {
      options.label = value;
    } else if (flag == "--queue") {
      options.queue = static_cast<std::uint32_t>(ParseNumber(flag, value));
    } else if (flag == "--window") {
      options.window = ParseNumber(flag, value);
    } else if (flag == "--train-bytes") {
      options.train_bytes = ParseNumber(flag, value);
    } else if (flag == "--direct") {
      options.direct = ParseNumber(flag, value) != 0;
    } else {
      Die("unknown option " + std::string(flag) + "; usage: " + std::string(usage));
    }
  }
  if (options.count == 0) Die("--count must be at least 1");
  if (options.warmup == 0)
    options.warmup = std::max<std::uint64_t>(1, std::min<std::uint64_t>(options.count / 10, 10000));
  return options;
}

inline double Micros(Clock::duration d) {
  return std::chrono::duration<double, std::micro>(d).count();
}

// Round trips: median, p99 and mean of the samples (µs), as one JSON line.
inline void ReportPingPong(const Options& options, const std::string& path,
                           std::vector<double> samples_us) {
  std::sort(samples_us.begin(), samples_us.end());
  auto at = [&](double q) {
    const auto index = static_cast<std::size_t>(q * static_cast<double>(samples_us.size() - 1));
    return samples_us[index];
  };
  double sum = 0;
  for (const double s : samples_us) sum += s;
  std::printf(
      "{\"path\":\"%s\",\"label\":\"%s\",\"op\":\"pingpong\",\"size\":%zu,\"count\":%zu,"
      "\"rtt_us_median\":%.2f,\"rtt_us_p99\":%.2f,\"rtt_us_mean\":%.2f,\"rtt_us_min\":%.2f}\n",
      path.c_str(), options.label.c_str(), options.size, samples_us.size(), at(0.5), at(0.99),
      sum / static_cast<double>(samples_us.size()), samples_us.front());
  std::fflush(stdout);
}

// Stream: messages (and payload bytes, MB = 10^6 bytes) per second of the sender's time from its
// first send until the receiver confirmed the last message.
inline void ReportStream(const Options& options, const std::string& path, Clock::duration elapsed) {
  const double seconds = std::chrono::duration<double>(elapsed).count();
  const double msgs = static_cast<double>(options.count) / seconds;
  std::printf(
      "{\"path\":\"%s\",\"label\":\"%s\",\"op\":\"stream\",\"size\":%zu,\"count\":%zu,"
      "\"seconds\":%.6f,\"msgs_per_s\":%.1f,\"mb_per_s\":%.2f}\n",
      path.c_str(), options.label.c_str(), options.size, static_cast<std::size_t>(options.count),
      seconds, msgs, msgs * static_cast<double>(options.size) / 1e6);
  std::fflush(stdout);
}

}  // namespace tern::bench
