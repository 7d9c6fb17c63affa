// Telling ThreadSanitizer of an order it cannot see. Each is a no-op in a build without it.
//
// Its epoll interceptor takes EPOLL_CTL_ADD as a release and epoll_wait as an acquire, but not
// EPOLL_CTL_MOD: a connection re-armed with EPOLLONESHOT, handed from one serving thread to the
// next by the kernel, looked to it like two threads reading the connection at once.
//
// Thread-safety: the functions may be called from any thread.
#pragma once

#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TERN_TSAN 1
#endif
#endif
#if !defined(TERN_TSAN) && defined(__SANITIZE_THREAD__)
#define TERN_TSAN 1
#endif

#ifdef TERN_TSAN
#include <sanitizer/tsan_interface.h>
#endif

namespace tern::libtern {

// What this thread did before HandOff(object) happens before what a thread does after
// TakeOver(object).
inline void HandOff([[maybe_unused]] const void* object) {
#ifdef TERN_TSAN
  __tsan_release(const_cast<void*>(object));
#endif
}
inline void TakeOver([[maybe_unused]] const void* object) {
#ifdef TERN_TSAN
  __tsan_acquire(const_cast<void*>(object));
#endif
}

}  // namespace tern::libtern
