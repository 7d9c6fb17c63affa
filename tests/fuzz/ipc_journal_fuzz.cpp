// Fuzz target: the journal a restarted agent restores its IPC state from (<run_dir>/ipc/journal,
// PortRouter::RestoreDurable; docs/ipc.md "Port homes that survive their agent"). The file is
// the agent's own, in root's run directory, but a torn write, a full disk or a bug of ours must
// end in a clear error, never a crash or a router that half believes it.
//
// Input: a mode byte, then the journal file itself (mode even), or its records' payloads as
// fuzz_records.hpp's records (mode odd), which the target frames with their right checksums so
// that the fuzzer reaches the decoders behind them instead of stopping at a CRC mismatch.
//
// Properties checked: RestoreDurable returns a result or an error and never throws; a router
// that restored a journal and keeps its state writes a journal that restores again, to the same
// ports, queued messages and jobs (not byte for byte: a restored job's next name is moved up to
// the next multiple of 2^16, so that no name given before the restart is given again).
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <tern/ipc/port_router.hpp>
#include <tern/ipc/state_journal.hpp>

#include "fuzz_check.hpp"
#include "fuzz_records.hpp"
#include "job_request_sim.hpp"

namespace {

std::string Rewritten(tern::ipc::PortRouter& router) {
  router.KeepDurableState();
  auto write = router.TakeDurable();
  FUZZ_CHECK(write.rewrite_journal, "the first write after KeepDurableState starts afresh");
  std::string file;
  for (const auto& piece : write.journal) file += piece;
  return file;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  std::string file;
  if (data[0] % 2 == 0) {
    file.assign(reinterpret_cast<const char*>(data) + 1, size - 1);
  } else {
    file.assign(tern::ipc::kJournalMagic);
    tern::fuzz::Records records(data + 1, size - 1);
    while (auto record = records.Next()) tern::ipc::AppendStateRecord(file, record->bytes);
  }
  tern::fuzz::SmallRegions regions;
  tern::ipc::PortRouter first(1, regions);
  auto restored = first.RestoreDurable(file);
  if (!restored) return 0;
  const std::string again = Rewritten(first);

  tern::fuzz::SmallRegions other_regions;
  tern::ipc::PortRouter second(1, other_regions);
  auto restored_again = second.RestoreDurable(again);
  FUZZ_CHECK(restored_again.has_value(), "a journal the router wrote does not restore");
  FUZZ_CHECK(restored_again->ports == restored->ports, "ports lost or gained on a restart");
  FUZZ_CHECK(restored_again->messages == restored->messages, "messages lost or gained");
  FUZZ_CHECK(restored_again->jobs == restored->jobs, "jobs lost or gained on a restart");
  FUZZ_CHECK(restored_again->dropped_tail == 0, "a journal the router wrote has a torn tail");
  return 0;
}
