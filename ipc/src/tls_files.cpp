#include "tern/ipc/tls_files.hpp"

#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "openssl_error.hpp"

namespace tern::ipc {

namespace asio = boost::asio;

namespace {

// Key files are small; a bigger "key" is not one (and is not read whole into memory).
constexpr std::size_t kMaxKeyFileBytes = 64 * 1024;

// Opens `path` without following a final symlink and checks that only its owner (root) can read
// it. The fd is returned open so that the checked file is the one read (no window for a swap).
Expected<int> OpenKeyFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ELOOP) return Fail("TLS key " + path + " is a symlink: refused (use the file)");
    return Fail("cannot open TLS key " + path + ": " + std::strerror(errno));
  }
  struct stat info {};
  if (::fstat(fd, &info) != 0) {
    const std::string why = std::strerror(errno);
    ::close(fd);
    return Fail("cannot stat TLS key " + path + ": " + why);
  }
  std::string problem;
  if (!S_ISREG(info.st_mode)) {
    problem = "is not a regular file";
  } else if (info.st_uid != 0 && info.st_uid != ::geteuid()) {
    problem =
        "is owned by uid " + std::to_string(info.st_uid) + ", not root (chown root " + path + ")";
  } else if ((info.st_mode & 077) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(info.st_mode & 07777));
    problem = std::string("has mode ") + mode + ": others may read it (chmod 600 " + path + ")";
  } else if (static_cast<std::size_t>(info.st_size) > kMaxKeyFileBytes) {
    problem = "is larger than " + std::to_string(kMaxKeyFileBytes) + " bytes";
  }
  if (!problem.empty()) {
    ::close(fd);
    return Fail("TLS key " + path + " " + problem + ": refused");
  }
  return fd;
}

Expected<std::string> ReadKeyFile(const std::string& path) {
  auto fd = OpenKeyFile(path);
  if (!fd) return Fail(fd.error().message);
  std::string text;
  char buffer[4096];
  for (;;) {
    const ssize_t got = ::read(*fd, buffer, sizeof buffer);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) {
      const std::string why = std::strerror(errno);
      ::close(*fd);
      return Fail("cannot read TLS key " + path + ": " + why);
    }
    if (got == 0) break;
    text.append(buffer, static_cast<std::size_t>(got));
    if (text.size() > kMaxKeyFileBytes) {
      ::close(*fd);
      return Fail("TLS key " + path + " is larger than " + std::to_string(kMaxKeyFileBytes) +
                  " bytes: refused");
    }
  }
  ::close(*fd);
  return text;
}

Expected<void> Readable(const std::string& what, const std::string& key, const std::string& path) {
  if (path.empty()) return Fail("no TLS " + what + " configured ([tls] " + key + ")");
  struct stat info {};
  if (::stat(path.c_str(), &info) != 0) {
    return Fail("no TLS " + what + " at " + path + ": " + std::strerror(errno));
  }
  if (!S_ISREG(info.st_mode)) return Fail("TLS " + what + " " + path + " is not a regular file");
  return {};
}

}  // namespace

Expected<void> CheckKeyFile(const std::string& path) {
  auto fd = OpenKeyFile(path);
  if (!fd) return Fail(fd.error().message);
  ::close(*fd);
  return {};
}

Expected<std::shared_ptr<asio::ssl::context>> MakeTlsContext(const TlsFiles& files, TlsRole role) {
  if (auto ok = Readable("certificate", "cert", files.cert); !ok) return Fail(ok.error().message);
  if (auto ok = Readable("CA certificate", "ca", files.ca); !ok) return Fail(ok.error().message);
  auto key = ReadKeyFile(files.key);
  if (!key) return Fail(key.error().message);

  auto context = std::make_shared<asio::ssl::context>(
      role == TlsRole::kServer ? asio::ssl::context::tls_server : asio::ssl::context::tls_client);
  SSL_CTX* ctx = context->native_handle();
  ERR_clear_error();
  if (SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) != 1 ||
      SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) != 1) {
    return Fail("cannot restrict TLS to version 1.3: " + OpenSslError());
  }
  // AES-128-GCM first: AES-NI makes it the cheapest; the others stay for peers without it.
  if (SSL_CTX_set_ciphersuites(
          ctx, "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256") != 1) {
    return Fail("cannot set the TLS 1.3 cipher suites: " + OpenSslError());
  }
  SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_CIPHER_SERVER_PREFERENCE);
  // Peers are long-lived links: no session tickets to resume (and none to steal).
  SSL_CTX_set_num_tickets(ctx, 0);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);

  boost::system::error_code error;
  context->load_verify_file(files.ca, error);
  if (error) return Fail("cannot load the TLS CA " + files.ca + ": " + error.message());
  context->use_certificate_chain_file(files.cert, error);
  if (error) return Fail("cannot load the TLS cert " + files.cert + ": " + error.message());
  context->use_private_key(asio::buffer(*key), asio::ssl::context::pem, error);
  OPENSSL_cleanse(key->data(), key->size());
  if (error) {
    return Fail("cannot load the TLS key " + files.key + " for " + files.cert + ": " +
                error.message());
  }
  if (SSL_CTX_check_private_key(ctx) != 1) {
    return Fail("TLS key " + files.key + " does not match the certificate " + files.cert);
  }
  context->set_verify_mode(asio::ssl::verify_peer | asio::ssl::verify_fail_if_no_peer_cert, error);
  if (error) return Fail("cannot require peer certificates: " + error.message());
  return context;
}

std::string PeerCertificateName(SSL* ssl) {
  if (ssl == nullptr || SSL_get_verify_result(ssl) != X509_V_OK) return "";
  X509* cert = SSL_get0_peer_certificate(ssl);
  if (cert == nullptr) return "";
  std::string name;
  auto* names =
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
  if (names != nullptr) {
    for (int i = 0; i < sk_GENERAL_NAME_num(names) && name.empty(); ++i) {
      const GENERAL_NAME* entry = sk_GENERAL_NAME_value(names, i);
      if (entry->type != GEN_DNS) continue;
      const ASN1_IA5STRING* dns = entry->d.dNSName;
      name.assign(reinterpret_cast<const char*>(ASN1_STRING_get0_data(dns)),
                  static_cast<std::size_t>(ASN1_STRING_length(dns)));
    }
    GENERAL_NAMES_free(names);
  }
  if (name.empty()) {
    char cn[256] = {};
    const int length =
        X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof cn);
    if (length > 0) name.assign(cn, static_cast<std::size_t>(length));
  }
  // A name with a NUL inside could compare equal to a shorter claim in C code: refuse it here.
  if (name.find('\0') != std::string::npos) return "";
  return name;
}

}  // namespace tern::ipc
