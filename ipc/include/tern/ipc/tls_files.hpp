// TlsFiles: where a node's TLS material lives ([tls] in ternd.toml) and how it becomes an
// OpenSSL context for mutual TLS 1.3 between tern's parts (peer links, the HTTP API, CRIU's page
// server flags).
//
// Contract:
//  - CheckKeyFile(path) accepts only a regular file (a symlink is refused, not followed) owned
//    by root (or by the current effective uid when that is not root, so tests can run
//    unprivileged) with no permission bits for group or others (0600 or stricter). Every refusal
//    is one readable line naming the file and what is wrong.
//  - MakeTlsContext(files, role) loads ca/cert/key (the key checked by CheckKeyFile first) and
//    returns a context that speaks TLS 1.3 only (TLS_AES_128_GCM_SHA256 first), requires a peer
//    certificate signed by `ca` on both sides (a server refuses a client without one), and
//    checks that the key matches the certificate. Host names are not checked here: callers
//    compare PeerCertificateName() with the name the peer claims.
//  - PeerCertificateName(ssl) is the node name of the verified peer certificate: its first
//    dNSName SAN, else its subject CN; empty when there is no verified certificate.
//
// Thread-safety: the functions are reentrant. A context may be shared by many streams (OpenSSL
// contexts are thread-safe once set up); do not change it after handing it out.
#pragma once

#include <openssl/ssl.h>

#include <boost/asio/ssl/context.hpp>
#include <memory>
#include <string>
#include <tern/expected.hpp>

namespace tern::ipc {

struct TlsFiles {
  std::string ca = "/etc/tern/tls/ca.crt";
  std::string cert = "/etc/tern/tls/node.crt";
  std::string key = "/etc/tern/tls/node.key";
};

enum class TlsRole { kClient, kServer };

// A key file that only its owner (root) may read; refused with why otherwise.
Expected<void> CheckKeyFile(const std::string& path);

// A shared_ptr because boost::asio::ssl::context is not copyable and streams keep a reference.
Expected<std::shared_ptr<boost::asio::ssl::context>> MakeTlsContext(const TlsFiles& files,
                                                                    TlsRole role);

// The verified peer's node name (first dNSName SAN, else CN); "" without a verified certificate.
std::string PeerCertificateName(SSL* ssl);

}  // namespace tern::ipc
