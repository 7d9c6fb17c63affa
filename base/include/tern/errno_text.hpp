// Errno: "what: <strerror(errno)>", the message of a failed system call, for error returns.
// Reads errno, so call it right after the call that failed. Thread-safe (errno is per thread;
// strerror's text for a valid errno is static).
#pragma once

#include <cerrno>
#include <cstring>
#include <string>

namespace tern {

inline std::string Errno(const std::string& what) { return what + ": " + std::strerror(errno); }

}  // namespace tern
