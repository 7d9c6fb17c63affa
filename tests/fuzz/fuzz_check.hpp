// FUZZ_CHECK: a property a fuzz target asserts about the code under test. A failed check
// prints what broke and aborts, which libFuzzer reports as a crash and saves the input.
//
// Thread-safety: the targets are single-threaded; so is this.
#pragma once

#include <cstdio>
#include <cstdlib>

#define FUZZ_CHECK(condition, what)                                                           \
  do {                                                                                        \
    if (!(condition)) {                                                                       \
      std::fprintf(stderr, "fuzz check failed at %s:%d: %s (%s)\n", __FILE__, __LINE__, what, \
                   #condition);                                                               \
      std::abort();                                                                           \
    }                                                                                         \
  } while (false)
