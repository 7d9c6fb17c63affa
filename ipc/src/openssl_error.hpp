// OpenSslError: the oldest error on this thread's OpenSSL error queue, as text, and the queue
// cleared (so that a later call does not report a stale error).
//
// Thread-safety: OpenSSL's error queue is per thread; safe from any thread.
#pragma once

#include <openssl/err.h>

#include <string>

namespace tern::ipc {

inline std::string OpenSslError() {
  const unsigned long code = ERR_get_error();
  ERR_clear_error();
  if (code == 0) return "unknown OpenSSL error";
  char text[256];
  ERR_error_string_n(code, text, sizeof text);
  return text;
}

}  // namespace tern::ipc
