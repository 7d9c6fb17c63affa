// Fuzz target: what a job may send on its IPC channel: DecodeJobRequest and every op's body
// decoding in ipc/src/port_router.cpp (send requests, messages, trains, names, links,
// regions), played against two routers with the frames between them, timers, jobs ending and
// jobs moving (and junk imported as a moving job's state, as a peer could send). The world and
// the input format are JobRequestSim's (job_request_sim.hpp).
//
// Properties checked: every reply to a job carries a reply header; nothing throws or trips
// the sanitizers.
#include <cstddef>
#include <cstdint>

#include "fuzz_records.hpp"
#include "job_request_sim.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  tern::fuzz::JobRequestSim sim;
  tern::fuzz::Records records(data, size);
  int steps = 0;
  while (auto record = records.Next()) {
    if (++steps > 256) break;  // keeps each run short; longer inputs reach nothing new
    sim.Play(*record);
  }
  return 0;
}
