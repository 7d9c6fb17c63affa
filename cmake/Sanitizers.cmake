# Sanitizer and fuzzing builds (docs/security.md "Fuzzing" and "Sanitizers").
#
#   -DTERN_SANITIZE=address,undefined   every target compiled and linked with these sanitizers
#                                        (gcc or clang); deploy/test runs the unit tests so.
#   -DTERN_FUZZ=ON                       clang only: every target gets libFuzzer's coverage
#                                        instrumentation and tests/fuzz builds the fuzz targets
#                                        (deploy/fuzz). Implies address,undefined unless
#                                        TERN_SANITIZE says otherwise.
#
#   -DTERN_SANITIZE_QUICK_BUILD=ON      compile without optimisation and with line tables only
#                                        (-O0 -gline-tables-only on clang, -O0 -g1 on gcc): half
#                                        the compile time of -O2 -g, slower runs. deploy/test's
#                                        sanitizer step, which builds the tree to run the unit
#                                        tests and 20 s of each fuzz target once, uses it.
#
# Neither is on by default: the ordinary build (deploy/build) is unchanged.
set(TERN_SANITIZE "" CACHE STRING "Comma-separated -fsanitize= list for every target (e.g. address,undefined)")
option(TERN_SANITIZE_QUICK_BUILD "Sanitizer or fuzzing tree: -O0, line tables only" OFF)
option(TERN_FUZZ "Build the libFuzzer targets in tests/fuzz (needs clang)" OFF)

if(TERN_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
    message(FATAL_ERROR "TERN_FUZZ needs clang (libFuzzer): configure with "
                        "-DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14 (deploy/fuzz does)")
  endif()
  if(TERN_SANITIZE STREQUAL "")
    set(TERN_SANITIZE "address,undefined")
  endif()
  # Coverage feedback for libFuzzer in every library the targets link; only the fuzz targets
  # themselves link libFuzzer's main (-fsanitize=fuzzer, tests/fuzz/CMakeLists.txt).
  add_compile_options(-fsanitize=fuzzer-no-link)
endif()

if(NOT TERN_SANITIZE STREQUAL "")
  # Frame pointers for readable reports; a UBSan finding stops the test instead of scrolling by.
  add_compile_options(-fsanitize=${TERN_SANITIZE} -fno-omit-frame-pointer -fno-sanitize-recover=all)
  add_link_options(-fsanitize=${TERN_SANITIZE} -fno-sanitize-recover=all)
  message(STATUS "tern: sanitizers ${TERN_SANITIZE}")
  if(TERN_SANITIZE_QUICK_BUILD)
    # After the build type's -O2 -g on the command line, so these win.
    if(CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
      add_compile_options(-O0 -gline-tables-only)
    else()
      add_compile_options(-O0 -g1)
    endif()
  endif()
endif()

# Keeps -O2 in a quick tree: code whose unit tests simulate minutes of cluster time (gossip
# among 1,000 agents, the migration state machines under every fault, tern-sim), where -O0 under
# ASan made the tests 3-5x slower, more than the compile time it saves on them; and the code the
# fuzz targets drive (the targets, tern_ipc, tern_jobs, the agent's codecs), where -O0 made
# CI's 20 s runs 5-26x shorter in inputs (job_request: 285,513 runs at -O2, 10,957 at -O0).
function(tern_optimise_in_quick_build)
  if(TERN_SANITIZE_QUICK_BUILD AND NOT TERN_SANITIZE STREQUAL "")
    foreach(target IN LISTS ARGN)
      target_compile_options(${target} PRIVATE -O2)
    endforeach()
  endif()
endfunction()
