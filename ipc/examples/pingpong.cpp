// tern-example-pingpong: round trips between two jobs through ports.
//
//   tern-example-pingpong server [--name pingpong]
//   tern-example-pingpong client [--name pingpong] [--count 1000] [--size 64]
//
// The server registers a port under --name and echoes every message to its reply right. The
// client (usually on another node) looks the name up, makes --count round trips of --size
// bytes, prints the median and 99th-percentile round trip and tells the server to stop.
#include <chrono>
#include <iostream>

#include "example_util.hpp"

namespace {

using namespace tern;
using examples::Fail;

constexpr std::uint32_t kPing = 1;
constexpr std::uint32_t kQuit = 2;

int Server(const Channel& channel, const std::string& name) {
  auto port = channel.port_allocate();
  if (!port) return Fail("port_allocate", port.error());
  if (auto registered = channel.name_register(name, *port); !registered) {
    return Fail("name_register " + name, registered.error());
  }
  std::cout << "pingpong server: serving \"" << name << "\" on port " << *port << std::endl;
  long pings = 0;
  for (;;) {
    auto message = channel.receive(*port);
    if (!message) return Fail("receive", message.error());
    if (message->id == kQuit) break;
    if (message->reply == 0) continue;
    Message pong;
    pong.destination = message->reply;
    pong.destination_disposition = Disposition::kMoveSendOnce;
    pong.id = kPing;
    pong.items = std::move(message->items);
    if (auto sent = channel.send(pong); !sent) return Fail("reply", sent.error());
    ++pings;
  }
  (void)channel.name_unregister(name);
  std::cout << "pingpong server: answered " << pings << " pings, done" << std::endl;
  return 0;
}

int Client(const Channel& channel, const std::string& name, long count, long size) {
  auto server = examples::LookupWaiting(channel, name, std::chrono::seconds(30));
  if (!server) return Fail("name_lookup " + name, server.error());
  auto reply_port = channel.port_allocate();
  if (!reply_port) return Fail("port_allocate", reply_port.error());
  std::cout << "pingpong client: " << count << " round trips of " << size << " bytes to \"" << name
            << "\"" << std::endl;
  const std::string payload(static_cast<std::size_t>(size), 'p');
  std::vector<double> micros;
  micros.reserve(static_cast<std::size_t>(count));
  for (long i = 0; i < count; ++i) {
    const auto start = std::chrono::steady_clock::now();
    auto ping = MessageBuilder(*server).id(kPing).reply(*reply_port).bytes(payload).build();
    if (auto sent = channel.send(ping, FullPolicy::kWait, std::chrono::seconds(10)); !sent) {
      return Fail("send", sent.error());
    }
    auto pong = channel.receive(*reply_port, std::chrono::seconds(10));
    if (!pong) return Fail("receive", pong.error());
    if (FirstBytes(*pong).size() != payload.size()) {
      std::cerr << "pingpong client: reply of the wrong size\n";
      return 1;
    }
    micros.push_back(
        std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start)
            .count());
  }
  (void)channel.send(MessageBuilder(*server).id(kQuit).build());
  const auto [median, p99] = examples::MedianP99(micros);
  std::cout << "pingpong client: median round trip " << median << " us, p99 " << p99 << " us"
            << std::endl;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const examples::Args args(argc, argv);
  if (args.help() || !args.bad().empty() || (args.mode() != "server" && args.mode() != "client")) {
    if (!args.bad().empty()) std::cerr << args.bad() << "\n";
    std::cerr << "usage: tern-example-pingpong server [--name pingpong]\n"
                 "       tern-example-pingpong client [--name pingpong] [--count 1000] "
                 "[--size 64]\n";
    return args.help() ? 0 : 2;
  }
  const Channel channel;
  const std::string name = args.Get("name", "pingpong");
  if (args.mode() == "server") return Server(channel, name);
  return Client(channel, name, args.Int("count", 1000), args.Int("size", 64));
}
