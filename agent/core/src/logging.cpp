#include "tern/agent/logging.hpp"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

namespace tern::agent {

Expected<void> SetUpLogging(const std::string& level, const std::string& file) {
  const auto parsed = spdlog::level::from_str(level);
  if (parsed == spdlog::level::off && level != "off") {
    return Fail("unknown log level '" + level + "' (trace, debug, info, warn, error)");
  }
  try {
    auto logger =
        file.empty() ? spdlog::stderr_logger_mt("ternd") : spdlog::basic_logger_mt("ternd", file);
    spdlog::set_default_logger(logger);
  } catch (const spdlog::spdlog_ex& error) {
    return Fail("cannot open log " + file + ": " + error.what());
  }
  spdlog::set_level(parsed);
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
  spdlog::flush_on(spdlog::level::info);
  return {};
}

}  // namespace tern::agent
