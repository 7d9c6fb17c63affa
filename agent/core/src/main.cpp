// ternd: the tern agent. One runs on every node.
#include <malloc.h>
#include <spdlog/spdlog.h>
#include <sys/prctl.h>

#include <CLI/CLI.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <csignal>
#include <filesystem>
#include <iostream>
#include <string_view>

#include "page_relay_main.hpp"
#include "tern/agent/agent.hpp"
#include "tern/agent/config.hpp"
#include "tern/agent/logging.hpp"
#include "tern/agent/service_notify.hpp"

#ifndef TERN_VERSION
#define TERN_VERSION "0.0.0"
#endif

int main(int argc, char** argv) {
  // A post-copy move's relay (page_relay_main.hpp): started by the agent, not an agent itself.
  if (argc > 1 && std::string_view(argv[1]) == "page-relay") {
    return tern::agent::RunPageRelay(argc - 1, argv + 1);
  }
  // IPC messages of up to hundreds of MiB pass through the agent. With glibc's defaults every
  // buffer over 128 KiB is a fresh mmap whose pages fault in on first touch (~0.4 GB/s on these
  // VMs, PLATFORM.md); keeping them in the heap for reuse makes a 1 MiB message ~10x cheaper.
  mallopt(M_MMAP_THRESHOLD, 64 << 20);
  mallopt(M_TRIM_THRESHOLD, 128 << 20);
  CLI::App app{"ternd — the tern agent: runs jobs, gossips load, serves the tern API"};
  std::string config_path = "/etc/tern/ternd.toml";
  std::string log_level;
  bool show_version = false;
  app.add_option("-c,--config", config_path, "TOML config file (docs/config.md)");
  app.add_option("--log-level", log_level, "trace, debug, info, warn or error (overrides config)");
  app.add_flag("--version", show_version, "print the version and exit");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& error) {
    const int code = app.exit(error);
    return code == 0 ? 0 : 2;
  }
  if (show_version) {
    std::cout << "ternd " << TERN_VERSION << "\n";
    return 0;
  }

  const bool default_path = !app.count("--config");
  auto config = tern::agent::LoadConfig(config_path, default_path);
  if (!config) {
    std::cerr << "ternd: " << config.error().message << "\n";
    return 1;
  }
  if (!log_level.empty()) config->log_level = log_level;
  if (auto resolved = tern::agent::ResolveMachineDefaults(
          *config, std::filesystem::read_symlink("/proc/self/exe").string());
      !resolved) {
    std::cerr << "ternd: " << resolved.error().message << "\n";
    return 1;
  }
  if (auto logging = tern::agent::SetUpLogging(config->log_level, config->log_file); !logging) {
    std::cerr << "ternd: " << logging.error().message << "\n";
    return 1;
  }

  // Jobs whose launcher exits, and jobs restored by CRIU, are re-parented to us: we reap them.
  prctl(PR_SET_CHILD_SUBREAPER, 1);
  std::signal(SIGPIPE, SIG_IGN);

  boost::asio::io_context io;
  tern::agent::Agent agent(io, *config, TERN_VERSION);
  if (auto started = agent.Start(); !started) {
    spdlog::critical("cannot start: {}", started.error().message);
    std::cerr << "ternd: " << started.error().message << "\n";
    return 1;
  }
  tern::agent::ServiceNotify::Ready("node " + config->node_name + " is up");
  boost::asio::signal_set stop_signals(io, SIGTERM, SIGINT);
  stop_signals.async_wait([&](const boost::system::error_code& error, int signal_number) {
    if (error) return;
    spdlog::info("signal {}: stopping (jobs keep running and are re-adopted on restart)",
                 signal_number);
    tern::agent::ServiceNotify::Stopping();
    agent.Stop();
    io.stop();
  });
  // One request or callback that throws must not stop the agent (a restarted agent would meet
  // the same input again): log it and carry on with the rest.
  for (;;) {
    try {
      io.run();
      break;
    } catch (const std::exception& error) {
      spdlog::error("a handler failed and was skipped: {}", error.what());
    } catch (...) {
      spdlog::error("a handler failed with an unknown exception and was skipped");
    }
  }
  spdlog::info("ternd stopped");
  return 0;
}
