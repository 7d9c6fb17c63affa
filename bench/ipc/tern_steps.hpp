// Shared by the bench programs that run as tern jobs (tern.cpp, move_stream.cpp): a failed IPC
// step ends the program with a status bench/ipc/run reads (3: tern IPC is not available here,
// 1: anything else) and the step's error on stderr, and a name looked up until its server has
// registered it.
//
// Thread-safety: Check may be called from any thread; kProgram is set once, before any use.
#pragma once

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <tern/ipc.hpp>
#include <thread>

namespace tern::bench {

// The program's name, for the messages (each program defines it).
extern const char* const kProgram;

[[noreturn]] inline void StepFailed(const IpcError& error, const char* what) {
  std::fprintf(stderr, "%s: %s: %s\n", kProgram, what, error.ToString().c_str());
  std::exit(error.status == JobStatus::kUnavailable ? 3 : 1);
}

template <typename T>
T Check(IpcResult<T> result, const char* what) {
  if (!result) StepFailed(result.error(), what);
  return std::move(result).value();
}

inline void Check(IpcResult<void> result, const char* what) {
  if (!result) StepFailed(result.error(), what);
}

// `name`'s port, asked again every 20 ms for up to 30 s while it is not registered yet.
inline std::uint32_t Lookup(const Channel& channel, const std::string& name) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (true) {
    auto port = channel.name_lookup(name);
    if (port || port.status() != JobStatus::kNotFound ||
        std::chrono::steady_clock::now() > deadline) {
      return Check(std::move(port), "name_lookup");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

}  // namespace tern::bench
