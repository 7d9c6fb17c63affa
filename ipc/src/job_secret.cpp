#include "tern/ipc/job_secret.hpp"

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <tern/ipc/job_attach.hpp>

namespace tern::ipc {

std::string JobSecret(std::string_view cluster_key, std::string_view job) {
  if (cluster_key.empty()) return {};
  // Domain-separated from every other use of the cluster secret (the peers' proofs).
  std::string message = "tern-job-channel-secret-v1|";
  message.append(job);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  if (HMAC(EVP_sha256(), cluster_key.data(), static_cast<int>(cluster_key.size()),
           reinterpret_cast<const unsigned char*>(message.data()), message.size(), digest,
           &length) == nullptr ||
      length != kJobSecretSize) {
    return {};
  }
  return std::string(reinterpret_cast<const char*>(digest), length);
}

}  // namespace tern::ipc
