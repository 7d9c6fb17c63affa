// Fuzz target: the agent's TOML config (agent/core/src/config.cpp, through toml++). The file
// is root's, but a typo must get a clear error, not a crash, and so must anything else.
//
// Properties checked: ParseConfig returns a config or an error and never throws.
#include <cstddef>
#include <cstdint>
#include <string>
#include <tern/agent/config.hpp>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  (void)tern::agent::ParseConfig(text, "fuzz.toml");
  return 0;
}
