# Sanitizer and fuzzing builds (docs/security.md "Fuzzing" and "Sanitizers").
#
#   -DTERN_SANITIZE=address,undefined   every target compiled and linked with these sanitizers
#                                        (gcc or clang); deploy/test runs the unit tests so.
#   -DTERN_FUZZ=ON                       clang only: every target gets libFuzzer's coverage
#                                        instrumentation and tests/fuzz builds the fuzz targets
#                                        (deploy/fuzz). Implies address,undefined unless
#                                        TERN_SANITIZE says otherwise.
#
# Neither is on by default: the ordinary build (deploy/build) is unchanged.
set(TERN_SANITIZE "" CACHE STRING "Comma-separated -fsanitize= list for every target (e.g. address,undefined)")
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
endif()
