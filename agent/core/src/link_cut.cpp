#include "link_cut.hpp"

#include <nftables/libnftables.h>

#include <memory>
#include <string>

namespace tern::agent {
namespace {

struct NftDeleter {
  void operator()(nft_ctx* context) const { nft_ctx_free(context); }
};

Expected<void> RunNft(const std::string& commands) {
  std::unique_ptr<nft_ctx, NftDeleter> context(nft_ctx_new(NFT_CTX_DEFAULT));
  if (!context) return Fail("cannot make an nftables context");
  nft_ctx_buffer_error(context.get());
  if (nft_run_cmd_from_buffer(context.get(), commands.c_str()) != 0) {
    const char* error = nft_ctx_get_error_buffer(context.get());
    return Fail(std::string("nftables: ") + (error != nullptr ? error : "failed"));
  }
  return {};
}

}  // namespace

Expected<void> ApplyLinkCut() {
  // Created empty first so that "delete" always finds it: the whole batch is one transaction.
  return RunNft(
      "add table inet tern_fault_cut\n"
      "delete table inet tern_fault_cut\n"
      "table inet tern_fault_cut {\n"
      "  chain in { type filter hook input priority -300; iifname != \"lo\" drop; }\n"
      "  chain out { type filter hook output priority -300; oifname != \"lo\" drop; }\n"
      "  chain through { type filter hook forward priority -300; drop; }\n"
      "}\n");
}

Expected<void> LiftLinkCut() {
  return RunNft("add table inet tern_fault_cut\ndelete table inet tern_fault_cut\n");
}

}  // namespace tern::agent
