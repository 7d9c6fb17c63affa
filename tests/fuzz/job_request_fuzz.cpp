// Fuzz target: what a job may send on its IPC channel: DecodeJobRequest and every op's body
// decoding in ipc/src/port_router.cpp (send requests, messages, trains, names, links,
// regions), played against two routers with the frames between them, timers, jobs ending and
// jobs moving (and junk imported as a moving job's state, as a peer could send). The world and
// the input format are JobRequestSim's (job_request_sim.hpp).
//
// Properties checked: every reply to a job carries a reply header; the journal each router
// keeps of its durable state (docs/ipc.md "Port homes that survive their agent") restores a
// fresh router of that node, whatever the jobs did; nothing throws or trips the sanitizers.
#include <cstddef>
#include <cstdint>

#include "fuzz_check.hpp"
#include "fuzz_records.hpp"
#include "job_request_sim.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  tern::fuzz::JobRequestSim sim;
  sim.KeepDurable();
  tern::fuzz::Records records(data, size);
  int steps = 0;
  while (auto record = records.Next()) {
    if (++steps > 256) break;  // keeps each run short; longer inputs reach nothing new
    sim.Play(*record);
  }
  for (int n = 0; n < 2; ++n) {
    tern::fuzz::SmallRegions regions;
    tern::ipc::PortRouter restarted(static_cast<std::uint64_t>(n + 1), regions);
    auto restored = restarted.RestoreDurable(sim.journal(n));
    FUZZ_CHECK(restored.has_value(), "a router's own journal does not restore");
    FUZZ_CHECK(restored->dropped_tail == 0, "a router's own journal has a torn tail");
  }
  return 0;
}
