#include "nft_batch.hpp"

#include <nftables/libnftables.h>

#include <memory>

namespace tern::agent {
namespace {

struct NftDeleter {
  void operator()(nft_ctx* context) const { nft_ctx_free(context); }
};

}  // namespace

Expected<void> RunNftBatch(const std::string& commands) {
  std::unique_ptr<nft_ctx, NftDeleter> context(nft_ctx_new(NFT_CTX_DEFAULT));
  if (!context) return Fail("cannot make an nftables context");
  nft_ctx_buffer_error(context.get());
  if (nft_run_cmd_from_buffer(context.get(), commands.c_str()) != 0) {
    const char* error = nft_ctx_get_error_buffer(context.get());
    return Fail(std::string("nftables: ") + (error != nullptr ? error : "failed"));
  }
  return {};
}

}  // namespace tern::agent
