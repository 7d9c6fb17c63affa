#include "link_cut.hpp"

#include "nft_batch.hpp"

namespace tern::agent {

Expected<void> ApplyLinkCut() {
  // Created empty first so that "delete" always finds it: the whole batch is one transaction.
  return RunNftBatch(
      "add table inet tern_fault_cut\n"
      "delete table inet tern_fault_cut\n"
      "table inet tern_fault_cut {\n"
      "  chain in { type filter hook input priority -300; iifname != \"lo\" drop; }\n"
      "  chain out { type filter hook output priority -300; oifname != \"lo\" drop; }\n"
      "  chain through { type filter hook forward priority -300; drop; }\n"
      "}\n");
}

Expected<void> LiftLinkCut() {
  return RunNftBatch("add table inet tern_fault_cut\ndelete table inet tern_fault_cut\n");
}

}  // namespace tern::agent
