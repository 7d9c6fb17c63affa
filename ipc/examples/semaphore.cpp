// tern-example-semaphore: a port as a counting semaphore.
//
//   tern-example-semaphore [--slots 3] [--workers 8] [--rounds 5] [--hold-ms 20]
//
// A port with queue limit --slots holds --slots token messages. Acquire = receive a token,
// release = send it back. --workers threads each acquire and release --rounds times; the
// program counts holders and shows there are never more than --slots at once. A release
// beyond the limit is refused (queue_full), which is what keeps the count honest.
#include <atomic>
#include <iostream>

#include "example_util.hpp"

int main(int argc, char** argv) {
  using namespace tern;
  const examples::Args args(argc, argv);
  if (args.help() || !args.bad().empty() || !args.mode().empty()) {
    if (!args.bad().empty()) std::cerr << args.bad() << "\n";
    std::cerr << "usage: tern-example-semaphore [--slots 3] [--workers 8] [--rounds 5] "
                 "[--hold-ms 20]\n";
    return args.help() ? 0 : 2;
  }
  const long slots = args.Int("slots", 3);
  const long workers = args.Int("workers", 8);
  const long rounds = args.Int("rounds", 5);
  const auto hold = std::chrono::milliseconds(args.Int("hold-ms", 20));
  if (slots < 1) {
    std::cerr << "--slots must be at least 1\n";
    return 2;
  }

  const Channel channel;
  auto port = channel.port_allocate(static_cast<std::uint32_t>(slots));
  if (!port) return examples::Fail("port_allocate", port.error());
  auto token_right = channel.make_send(*port);
  if (!token_right) return examples::Fail("make_send", token_right.error());
  for (long i = 0; i < slots; ++i) {
    if (auto sent = channel.send(BytesMessage(*token_right, "token")); !sent) {
      return examples::Fail("initial token", sent.error());
    }
  }
  // One token too many: the queue limit refuses it.
  auto extra = channel.send(BytesMessage(*token_right, "token"));
  std::cout << "semaphore: " << slots << " slots; an extra release is refused: "
            << (extra ? std::string("accepted?!") : extra.error().ToString()) << std::endl;
  if (extra) return 1;

  std::atomic<long> holders{0};
  std::atomic<long> peak{0};
  std::atomic<long> errors{0};
  {
    std::vector<std::jthread> threads;
    for (long w = 0; w < workers; ++w) {
      threads.emplace_back([&, w] {
        for (long r = 0; r < rounds; ++r) {
          auto token = channel.receive(*port, std::chrono::seconds(30));  // acquire
          if (!token) {
            std::cerr << "acquire: " << token.error().ToString() << "\n";
            ++errors;
            return;
          }
          const long now = ++holders;
          long seen = peak.load();
          while (now > seen && !peak.compare_exchange_weak(seen, now)) {
          }
          std::cout << "worker " << w << " holds a token (" << now << " holders)\n";
          std::this_thread::sleep_for(hold);
          --holders;
          // Release: the token goes back; it always fits because we took it out.
          if (auto sent = channel.send(BytesMessage(*token_right, "token")); !sent) {
            std::cerr << "release: " << sent.error().ToString() << "\n";
            ++errors;
            return;
          }
        }
      });
    }
  }
  std::cout << "semaphore: " << workers << " workers x " << rounds << " rounds, at most "
            << peak.load() << " holders at once (limit " << slots << ")" << std::endl;
  return errors == 0 && peak.load() <= slots ? 0 : 1;
}
