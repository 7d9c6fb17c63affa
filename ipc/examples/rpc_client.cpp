// tern-example-rpc-client: calls tern-example-rpc-server from several threads.
//
//   tern-example-rpc-client [--name rpc] [--calls 100] [--threads 1] [--timeout-ms 5000]
//                           [--pause-ms 0]
//
// Each thread makes --calls calls with a few random numbers and checks the sum that comes
// back, pausing --pause-ms between calls (a steady trickle, e.g. while the server moves);
// prints calls per second and the median call time. Exits 1 on any wrong or failed call.
#include <atomic>
#include <chrono>
#include <iostream>
#include <mutex>
#include <random>
#include <thread>

#include "example_util.hpp"

int main(int argc, char** argv) {
  using namespace tern;
  const examples::Args args(argc, argv);
  if (args.help() || !args.bad().empty() || !args.mode().empty()) {
    if (!args.bad().empty()) std::cerr << args.bad() << "\n";
    std::cerr << "usage: tern-example-rpc-client [--name rpc] [--calls 100] [--threads 1] "
                 "[--timeout-ms 5000] [--pause-ms 0]\n";
    return args.help() ? 0 : 2;
  }
  const std::string name = args.Get("name", "rpc");
  const long calls = args.Int("calls", 100);
  const long threads = args.Int("threads", 1);
  const auto pause = std::chrono::milliseconds(args.Int("pause-ms", 0));
  CallOptions options;
  options.timeout = Timeout(args.Int("timeout-ms", 5000));
  options.attempts = 3;

  const Channel channel;
  auto server = examples::LookupWaiting(channel, name, std::chrono::seconds(30));
  if (!server) return examples::Fail("name_lookup " + name, server.error());
  std::cout << "rpc client: " << threads << " threads x " << calls << " calls to \"" << name << "\""
            << std::endl;

  std::mutex mu;
  std::vector<double> micros;
  std::atomic<long> failures{0};
  const auto start = std::chrono::steady_clock::now();
  {
    std::vector<std::jthread> workers;
    for (long t = 0; t < threads; ++t) {
      workers.emplace_back([&, t] {
        std::mt19937 random(static_cast<unsigned>(t) + 1);
        std::vector<double> mine;
        for (long i = 0; i < calls; ++i) {
          if (i > 0 && pause.count() > 0) std::this_thread::sleep_for(pause);
          long long expected = 0;
          std::string request;
          for (int k = 0; k < 4; ++k) {
            const long long n = static_cast<long long>(random() % 1000);
            expected += n;
            request += std::to_string(n) + " ";
          }
          const auto begin = std::chrono::steady_clock::now();
          auto reply = channel.call(*server, request, options);
          if (!reply || *reply != std::to_string(expected)) {
            if (!reply) std::cerr << "call: " << reply.error().ToString() << "\n";
            ++failures;
            continue;
          }
          mine.push_back(
              std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - begin)
                  .count());
        }
        std::lock_guard lock(mu);
        micros.insert(micros.end(), mine.begin(), mine.end());
      });
    }
  }
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const auto [median, p99] = examples::MedianP99(micros);
  std::cout << "rpc client: " << micros.size() << " calls ok, " << failures << " failed, "
            << static_cast<long>(static_cast<double>(micros.size()) / elapsed)
            << " calls/s, median " << median << " us, p99 " << p99 << " us" << std::endl;
  return failures == 0 ? 0 : 1;
}
