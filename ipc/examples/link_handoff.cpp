// tern-example-link-handoff: job A creates a link and hands one end to job B.
//
//   tern-example-link-handoff b [--name handoff]
//   tern-example-link-handoff a [--name handoff] [--count 10]
//
// B registers a port under --name and waits for a link end to arrive on it. A creates a link,
// looks B up, moves one end to B in a message, and the two exchange --count ping/pong messages
// on the link (Charlotte-style: each send and receive is an operation handle to wait on).
#include <iostream>

#include "example_util.hpp"

namespace {

using namespace tern;
using examples::Fail;

constexpr std::uint32_t kEndHandoff = 1;
constexpr std::uint32_t kPing = 2;
constexpr std::uint32_t kBye = 3;

IpcResult<Message> ReceiveOnLink(const Channel& channel, std::uint32_t end) {
  auto handle = channel.link_receive(end);
  if (!handle) return handle.error();
  auto done = channel.wait(*handle, std::chrono::seconds(30));
  if (!done) return done.error();
  return std::move(done->message);
}

IpcResult<void> SendOnLink(const Channel& channel, std::uint32_t end, Message message) {
  auto handle = channel.link_send(end, message);
  if (!handle) return handle.error();
  auto done = channel.wait(*handle, std::chrono::seconds(30));
  if (!done) return done.error();
  return {};
}

int B(const Channel& channel, const std::string& name) {
  auto port = channel.port_allocate();
  if (!port) return Fail("port_allocate", port.error());
  if (auto registered = channel.name_register(name, *port); !registered) {
    return Fail("name_register " + name, registered.error());
  }
  std::cout << "B: waiting for a link end on \"" << name << "\"" << std::endl;
  auto handoff = channel.receive(*port, std::chrono::seconds(60));
  if (!handoff) return Fail("receive", handoff.error());
  std::uint32_t end = 0;
  for (const Item& item : handoff->items) {
    if (item.kind == ItemKind::kLinkEnd) end = item.name;
  }
  if (handoff->id != kEndHandoff || end == 0) {
    std::cerr << "B: the message carried no link end\n";
    return 1;
  }
  (void)channel.name_unregister(name);
  std::cout << "B: got link end " << end << std::endl;
  long pongs = 0;
  for (;;) {
    auto ping = ReceiveOnLink(channel, end);
    if (!ping) return Fail("link receive", ping.error());
    if (ping->id == kBye) break;
    std::cout << "B: received \"" << FirstBytes(*ping) << "\"" << std::endl;
    const std::string pong = "pong " + std::string(FirstBytes(*ping)).substr(5);
    if (auto sent = SendOnLink(channel, end, MessageBuilder(0).id(kPing).bytes(pong).build());
        !sent) {
      return Fail("link send", sent.error());
    }
    ++pongs;
  }
  std::cout << "B: answered " << pongs << " pings, done" << std::endl;
  return 0;
}

int A(const Channel& channel, const std::string& name, long count) {
  auto ends = channel.link_create();
  if (!ends) return Fail("link_create", ends.error());
  auto b = examples::LookupWaiting(channel, name, std::chrono::seconds(30));
  if (!b) return Fail("name_lookup " + name, b.error());
  auto handoff = MessageBuilder(*b).id(kEndHandoff).link_end(ends->second).build();
  if (auto sent = channel.send(handoff, FullPolicy::kWait, std::chrono::seconds(10)); !sent) {
    return Fail("send link end", sent.error());
  }
  std::cout << "A: created link (" << ends->first << ", " << ends->second << "), sent end "
            << ends->second << " to \"" << name << "\"" << std::endl;
  for (long i = 0; i < count; ++i) {
    const std::string ping = "ping " + std::to_string(i);
    if (auto sent =
            SendOnLink(channel, ends->first, MessageBuilder(0).id(kPing).bytes(ping).build());
        !sent) {
      return Fail("link send", sent.error());
    }
    auto pong = ReceiveOnLink(channel, ends->first);
    if (!pong) return Fail("link receive", pong.error());
    std::cout << "A: sent \"" << ping << "\", got \"" << FirstBytes(*pong) << "\"" << std::endl;
    if (FirstBytes(*pong) != "pong " + std::to_string(i)) {
      std::cerr << "A: wrong pong\n";
      return 1;
    }
  }
  if (auto sent = SendOnLink(channel, ends->first, MessageBuilder(0).id(kBye).build()); !sent) {
    return Fail("link send bye", sent.error());
  }
  std::cout << "A: " << count << " exchanges on the link, done" << std::endl;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const examples::Args args(argc, argv);
  if (args.help() || !args.bad().empty() || (args.mode() != "a" && args.mode() != "b")) {
    if (!args.bad().empty()) std::cerr << args.bad() << "\n";
    std::cerr << "usage: tern-example-link-handoff b [--name handoff]\n"
                 "       tern-example-link-handoff a [--name handoff] [--count 10]\n";
    return args.help() ? 0 : 2;
  }
  const Channel channel;
  const std::string name = args.Get("name", "handoff");
  if (args.mode() == "b") return B(channel, name);
  return A(channel, name, args.Int("count", 10));
}
