// tern-example-rpc-server: an RpcServer that adds up numbers.
//
//   tern-example-rpc-server [--name rpc] [--threads 4] [--ack explicit|implicit]
//                           [--requests 0] [--seconds 0]
//
// Registers a port under --name and serves it with --threads threads; a request is decimal
// integers separated by spaces, the reply their sum. Stops after --requests handler calls or
// --seconds seconds (0: never), then prints what it did.
#include <atomic>
#include <chrono>
#include <iostream>
#include <sstream>

#include "example_util.hpp"

int main(int argc, char** argv) {
  using namespace tern;
  const examples::Args args(argc, argv);
  const std::string ack = args.Get("ack", "explicit");
  if (args.help() || !args.bad().empty() || !args.mode().empty() ||
      (ack != "explicit" && ack != "implicit")) {
    if (!args.bad().empty()) std::cerr << args.bad() << "\n";
    std::cerr << "usage: tern-example-rpc-server [--name rpc] [--threads 4] "
                 "[--ack explicit|implicit] [--requests 0] [--seconds 0]\n";
    return args.help() ? 0 : 2;
  }
  const std::string name = args.Get("name", "rpc");
  const long requests = args.Int("requests", 0);
  const long seconds = args.Int("seconds", 0);
  RpcServerOptions options;
  options.threads = static_cast<int>(args.Int("threads", 4));
  options.ack = ack == "implicit" ? RpcAck::kImplicit : RpcAck::kExplicit;

  const Channel channel;
  auto port = channel.port_allocate();
  if (!port) return examples::Fail("port_allocate", port.error());
  if (auto registered = channel.name_register(name, *port); !registered) {
    return examples::Fail("name_register " + name, registered.error());
  }
  std::cout << "rpc server: \"" << name << "\" with " << options.threads << " threads, ack=" << ack
            << std::endl;

  RpcServer server(
      channel, *port,
      [](const RpcRequest& request) {
        std::istringstream numbers{std::string(request.bytes())};
        long long sum = 0;
        for (long long n = 0; numbers >> n;) sum += n;
        return std::vector<Item>{Item::Bytes(std::to_string(sum))};
      },
      options);

  const auto start = std::chrono::steady_clock::now();
  for (;;) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (requests > 0 && server.handled() >= static_cast<std::uint64_t>(requests)) break;
    if (seconds > 0 && std::chrono::steady_clock::now() - start >= std::chrono::seconds(seconds)) {
      break;
    }
    if (!channel.connected()) break;
  }
  server.stop();
  (void)channel.name_unregister(name);
  std::cout << "rpc server: handled " << server.handled() << " requests, " << server.kept_replies()
            << " replies still kept (unacknowledged)" << std::endl;
  std::cout << "rpc server: " << server.handled_direct() << " of them came over direct connections"
            << std::endl;
  if (!server.last_error().empty())
    std::cout << "rpc server: last error: " << server.last_error() << std::endl;
  return channel.connected() ? 0 : 1;
}
