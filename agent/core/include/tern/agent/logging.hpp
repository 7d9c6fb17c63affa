// The one logger setup of ternd: spdlog's default logger to stderr or to a file, with the
// level from the config. Called once, before anything logs.
#pragma once

#include <string>
#include <tern/expected.hpp>

namespace tern::agent {

Expected<void> SetUpLogging(const std::string& level, const std::string& file);

}  // namespace tern::agent
