// Blocking socket helpers for tests that stand in for CRIU's ends of a relay: every read is
// bounded (Bound) so that a broken relay fails the test instead of hanging it.
//
// Thread-safety: plain functions on the caller's fds; safe from any thread.
#pragma once

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cstddef>
#include <string>
#include <thread>

namespace tern::agent::testing {

// Gives reads on `fd` 10 s before they fail.
inline void Bound(int fd) {
  timeval patience{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &patience, sizeof patience);
}

// Reads `bytes` bytes, or fewer if the stream ends or the bound passes first.
inline std::string ReadExactly(int fd, std::size_t bytes) {
  std::string out(bytes, '\0');
  std::size_t have = 0;
  while (have < bytes) {
    const ssize_t got = ::read(fd, out.data() + have, bytes - have);
    if (got <= 0) break;
    have += static_cast<std::size_t>(got);
  }
  out.resize(have);
  return out;
}

inline bool WriteAll(int fd, const std::string& bytes) {
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t put = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (put <= 0) return false;
    done += static_cast<std::size_t>(put);
  }
  return true;
}

// Reads until end of file (or the bound): what arrived.
inline std::string ReadToEnd(int fd) {
  std::string out;
  char buffer[4096];
  for (;;) {
    const ssize_t got = ::read(fd, buffer, sizeof buffer);
    if (got <= 0) return out;
    out.append(buffer, static_cast<std::size_t>(got));
  }
}

// As lazy-pages and the page server talk through a relay: `request` from the destination's
// end arrives whole at the source's, then 1 MiB of patterned pages the other way.
inline void ExpectRequestAndPagesCross(int destination, int source, const std::string& request) {
  std::string pages(1 << 20, '\0');
  for (std::size_t i = 0; i < pages.size(); ++i) pages[i] = static_cast<char>((i * 131) >> 3);
  ASSERT_TRUE(WriteAll(destination, request));
  EXPECT_EQ(ReadExactly(source, request.size()), request);
  std::thread serve([&] { WriteAll(source, pages); });
  EXPECT_EQ(ReadExactly(destination, pages.size()), pages);
  serve.join();
}

}  // namespace tern::agent::testing
