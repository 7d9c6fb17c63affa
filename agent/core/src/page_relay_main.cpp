#include "page_relay_main.hpp"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <csignal>
#include <functional>
#include <string>
#include <tern/ipc/tls_files.hpp>

#include "lazy_page_proxy.hpp"

namespace tern::agent {
namespace {

// An fd handed over by the agent: it must be open, and it is ours to close.
Expected<UniqueFd> Inherited(int fd, const std::string& what) {
  if (fd < 3 || ::fcntl(fd, F_GETFD) < 0) {
    return Fail("no " + what + " at fd " + std::to_string(fd));
  }
  ::fcntl(fd, F_SETFD, FD_CLOEXEC);
  return UniqueFd(fd);
}

struct Arguments {
  std::string role;
  int criu_fd = -1;
  int listen_fd = -1;
  int status_fd = -1;
  std::string connect;
  std::string peer;
  std::string migration = "?";
  ipc::TlsFiles tls;
  long accept_patience_ms = 120'000;
  long idle_timeout_s = 600;
};

}  // namespace

int RunPageRelay(int argc, char** argv) {
  CLI::App app{"ternd page-relay — one post-copy move's lazy-page stream inside mutual TLS"};
  app.require_subcommand(1);
  Arguments args;
  for (const char* role : {"serve", "dial"}) {
    CLI::App* sub = app.add_subcommand(role);
    sub->callback([&args, role] { args.role = role; });
    sub->add_option("--criu-fd", args.criu_fd, "connected socket to CRIU's --ps-socket end")
        ->required();
    sub->add_option("--peer", args.peer, "the only node let in (its certificate's name)")
        ->required();
    sub->add_option("--ca", args.tls.ca)->required();
    sub->add_option("--cert", args.tls.cert)->required();
    sub->add_option("--key", args.tls.key)->required();
    sub->add_option("--migration", args.migration, "for the log");
    sub->add_option("--idle-timeout-s", args.idle_timeout_s, "exit after this long without a byte");
    if (std::string(role) == "serve") {
      sub->add_option("--listen-fd", args.listen_fd, "listening TCP socket")->required();
      sub->add_option("--accept-patience-ms", args.accept_patience_ms,
                      "exit if the peer is not in by then");
    } else {
      sub->add_option("--connect", args.connect, "HOST:PORT of the source's relay")->required();
      sub->add_option("--status-fd", args.status_fd, "one byte here once the peer is in");
    }
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& error) {
    return app.exit(error) == 0 ? 0 : 2;
  }
  ::setsid();
  std::signal(SIGPIPE, SIG_IGN);
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e page-relay[%P] %l: %v");

  auto fail = [&](const std::string& why) {
    spdlog::error("migration {}: {}", args.migration, why);
    return 1;
  };
  auto criu = Inherited(args.criu_fd, "CRIU socket");
  if (!criu) return fail(criu.error().message);
  UniqueFd status;
  if (args.status_fd >= 0) {
    auto inherited = Inherited(args.status_fd, "status pipe");
    if (!inherited) return fail(inherited.error().message);
    status = std::move(*inherited);
  }
  const bool serving = args.role == "serve";
  auto tls = ipc::MakeTlsContext(args.tls, serving ? ipc::TlsRole::kServer : ipc::TlsRole::kClient);
  if (!tls) return fail(tls.error().message);

  boost::asio::io_context io;
  LazyPageProxy::Options options;
  options.migration = args.migration;
  options.peer_node = args.peer;
  options.tls = std::move(*tls);
  options.accept_patience = std::chrono::milliseconds(args.accept_patience_ms);
  Expected<std::shared_ptr<LazyPageProxy>> relay = Fail("no role");
  if (serving) {
    auto listener = Inherited(args.listen_fd, "listening socket");
    if (!listener) return fail(listener.error().message);
    relay = LazyPageProxy::Serve(io, std::move(options), std::move(*criu), std::move(*listener));
  } else {
    const auto colon = args.connect.rfind(':');
    int port = 0;
    if (colon != std::string::npos) {
      try {
        port = std::stoi(args.connect.substr(colon + 1));
      } catch (const std::exception&) {
        port = 0;
      }
    }
    if (colon == std::string::npos || port <= 0 || port > 65535) {
      return fail("--connect wants HOST:PORT, not '" + args.connect + "'");
    }
    relay = LazyPageProxy::Dial(io, std::move(options), std::move(*criu),
                                args.connect.substr(0, colon), static_cast<std::uint16_t>(port));
  }
  if (!relay) return fail(relay.error().message);

  int exit_code = 1;
  (*relay)->WhenConnected([&status](Expected<void> connected) {
    if (connected && status.valid()) {
      const char up = 1;
      [[maybe_unused]] const auto written = ::write(status.get(), &up, 1);
    }
    status.Reset();  // the agent reads end of file if the peer never got in
  });
  (*relay)->WhenEnded([&](Expected<void> ended) {
    exit_code = ended ? 0 : 1;
    io.stop();
  });

  // Bounded idle: a stream that neither side uses any more is not held open forever (a CRIU end
  // that hangs, a peer that vanished without a FIN).
  boost::asio::steady_timer idle(io);
  const auto idle_limit = std::chrono::seconds(args.idle_timeout_s);
  const auto check_every = std::min<std::chrono::seconds>(idle_limit, std::chrono::seconds(5));
  std::uint64_t last_bytes = 0;
  auto last_change = std::chrono::steady_clock::now();
  std::function<void()> watch = [&] {
    idle.expires_after(check_every);
    idle.async_wait([&](const boost::system::error_code& error) {
      if (error) return;
      const std::uint64_t bytes = (*relay)->bytes_to_peer() + (*relay)->bytes_from_peer();
      const auto now = std::chrono::steady_clock::now();
      if (bytes != last_bytes) {
        last_bytes = bytes;
        last_change = now;
      } else if (now - last_change >= idle_limit) {
        spdlog::warn("migration {}: no byte either way for {} s: ending the relay", args.migration,
                     args.idle_timeout_s);
        (*relay)->Close();
        return;
      }
      watch();
    });
  };
  if (args.idle_timeout_s > 0) watch();

  boost::asio::signal_set stop(io, SIGTERM, SIGINT);
  stop.async_wait([&](const boost::system::error_code& error, int signal_number) {
    if (error) return;
    spdlog::info("migration {}: signal {}: ending the relay", args.migration, signal_number);
    (*relay)->Close();
  });
  io.run();
  return exit_code;
}

}  // namespace tern::agent
