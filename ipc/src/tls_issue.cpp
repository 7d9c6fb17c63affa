#include "tern/ipc/tls_issue.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <memory>
#include <tern/ipc/tls_files.hpp>

#include "openssl_error.hpp"

namespace tern::ipc {

namespace {

template <auto Free>
struct Deleter {
  template <typename T>
  void operator()(T* p) const {
    Free(p);
  }
};
using KeyPtr = std::unique_ptr<EVP_PKEY, Deleter<EVP_PKEY_free>>;
using CertPtr = std::unique_ptr<X509, Deleter<X509_free>>;
using BioPtr = std::unique_ptr<BIO, Deleter<BIO_free>>;
using ExtPtr = std::unique_ptr<X509_EXTENSION, Deleter<X509_EXTENSION_free>>;

std::string RandomHex(std::size_t bytes) {
  std::string raw(bytes, '\0');
  RAND_bytes(reinterpret_cast<unsigned char*>(raw.data()), static_cast<int>(bytes));
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : raw) {
    out.push_back(kDigits[c >> 4]);
    out.push_back(kDigits[c & 15]);
  }
  return out;
}

Expected<KeyPtr> NewP256Key() {
  KeyPtr key(EVP_EC_gen("P-256"));
  if (!key) return Fail("cannot make an EC P-256 key: " + OpenSslError());
  return key;
}

Expected<CertPtr> NewCertificate(EVP_PKEY* key, const std::string& common_name, int days) {
  CertPtr cert(X509_new());
  if (!cert) return Fail("cannot allocate a certificate: " + OpenSslError());
  X509_set_version(cert.get(), 2);  // v3
  // A random positive 127-bit serial: unique without a serial file to keep.
  unsigned char serial_bytes[16];
  RAND_bytes(serial_bytes, sizeof serial_bytes);
  serial_bytes[0] &= 0x7f;
  BIGNUM* serial = BN_bin2bn(serial_bytes, sizeof serial_bytes, nullptr);
  BN_to_ASN1_INTEGER(serial, X509_get_serialNumber(cert.get()));
  BN_free(serial);
  // Back-dated a little: a node whose clock lags the issuer's still accepts it.
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), static_cast<long>(days) * 24 * 3600);
  X509_set_pubkey(cert.get(), key);
  X509_NAME* name = X509_get_subject_name(cert.get());
  if (X509_NAME_add_entry_by_NID(name, NID_commonName, MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>(common_name.c_str()), -1,
                                 -1, 0) != 1) {
    return Fail("cannot set the certificate's name: " + OpenSslError());
  }
  return cert;
}

Expected<void> AddExtension(X509* cert, X509* issuer, int nid, const std::string& value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  ExtPtr ext(X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str()));
  if (!ext || X509_add_ext(cert, ext.get(), -1) != 1) {
    return Fail("cannot add the certificate extension " + std::string(OBJ_nid2sn(nid)) + " = " +
                value + ": " + OpenSslError());
  }
  return {};
}

// Writes `text` to a new file `path` with `mode`, never through a symlink. With `force` an
// existing file (not a directory) is replaced.
Expected<void> WriteNewFile(const std::string& path, const std::string& text, mode_t mode,
                            bool force) {
  if (force) {
    struct stat info {};
    if (::lstat(path.c_str(), &info) == 0) {
      if (S_ISDIR(info.st_mode)) return Fail(path + " is a directory");
      ::unlink(path.c_str());
    }
  }
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
  if (fd < 0) {
    if (errno == EEXIST) return Fail(path + " exists: refusing to overwrite it (--force replaces)");
    return Fail("cannot create " + path + ": " + std::strerror(errno));
  }
  ::fchmod(fd, mode);  // whatever the umask
  std::size_t done = 0;
  while (done < text.size()) {
    const ssize_t wrote = ::write(fd, text.data() + done, text.size() - done);
    if (wrote < 0 && errno == EINTR) continue;
    if (wrote <= 0) {
      const std::string why = std::strerror(errno);
      ::close(fd);
      ::unlink(path.c_str());
      return Fail("cannot write " + path + ": " + why);
    }
    done += static_cast<std::size_t>(wrote);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    ::unlink(path.c_str());
    return Fail("cannot write " + path + ": " + std::strerror(errno));
  }
  return {};
}

Expected<std::string> KeyPem(EVP_PKEY* key) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio ||
      PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) != 1) {
    return Fail("cannot encode the key: " + OpenSslError());
  }
  char* data = nullptr;
  const long size = BIO_get_mem_data(bio.get(), &data);
  std::string text(data, static_cast<std::size_t>(size));
  OPENSSL_cleanse(data, static_cast<std::size_t>(size));
  return text;
}

Expected<std::string> CertPem(X509* cert) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_X509(bio.get(), cert) != 1) {
    return Fail("cannot encode the certificate: " + OpenSslError());
  }
  char* data = nullptr;
  const long size = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<std::size_t>(size));
}

// Writes the certificate and key; on a failure nothing new is left behind.
Expected<void> WritePair(const std::string& cert_path, X509* cert, const std::string& key_path,
                         EVP_PKEY* key, bool force) {
  if (!force) {
    for (const std::string& path : {cert_path, key_path}) {
      struct stat info {};
      if (::lstat(path.c_str(), &info) == 0) {
        return Fail(path + " exists: refusing to overwrite it (--force replaces)");
      }
    }
  }
  auto key_text = KeyPem(key);
  if (!key_text) return Fail(key_text.error().message);
  auto cert_text = CertPem(cert);
  if (!cert_text) return Fail(cert_text.error().message);
  auto wrote_key = WriteNewFile(key_path, *key_text, 0600, force);
  OPENSSL_cleanse(key_text->data(), key_text->size());
  if (!wrote_key) return wrote_key;
  if (auto wrote = WriteNewFile(cert_path, *cert_text, 0644, force); !wrote) {
    ::unlink(key_path.c_str());
    return wrote;
  }
  return {};
}

Expected<void> MakeDirectory(const std::string& dir) {
  std::error_code error;
  std::filesystem::create_directories(dir, error);
  if (error) return Fail("cannot create " + dir + ": " + error.message());
  if (!std::filesystem::is_directory(dir, error)) return Fail(dir + " is not a directory");
  return {};
}

}  // namespace

bool IsValidNodeName(const std::string& name) {
  if (name.empty() || name.size() > 63) return false;
  for (char c : name) {
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
          c == '_')) {
      return false;
    }
  }
  return true;
}

Expected<CaPaths> CreateClusterCa(const std::string& dir, bool force) {
  if (auto made = MakeDirectory(dir); !made) return Fail(made.error().message);
  auto key = NewP256Key();
  if (!key) return Fail(key.error().message);
  auto cert = NewCertificate(key->get(), "tern cluster CA " + RandomHex(8), 10 * 365);
  if (!cert) return Fail(cert.error().message);
  X509* x = cert->get();
  X509_set_issuer_name(x, X509_get_subject_name(x));
  for (const auto& [nid, value] : {std::pair{NID_basic_constraints, "critical,CA:TRUE,pathlen:0"},
                                   std::pair{NID_key_usage, "critical,keyCertSign,cRLSign"},
                                   std::pair{NID_subject_key_identifier, "hash"}}) {
    if (auto added = AddExtension(x, x, nid, value); !added) return Fail(added.error().message);
  }
  if (X509_sign(x, key->get(), EVP_sha256()) == 0) {
    return Fail("cannot sign the CA certificate: " + OpenSslError());
  }
  CaPaths paths{dir + "/ca.crt", dir + "/ca.key"};
  if (auto wrote = WritePair(paths.cert, x, paths.key, key->get(), force); !wrote) {
    return Fail(wrote.error().message);
  }
  return paths;
}

Expected<NodeCertPaths> IssueNodeCertificate(const NodeCertRequest& request) {
  if (!IsValidNodeName(request.node)) {
    return Fail("node name '" + request.node +
                "' may hold only letters, digits, '-' and '_' (1 to 63 of them)");
  }
  std::string san = "DNS:" + request.node;
  for (const std::string& ip : request.ips) {
    unsigned char buffer[16];
    if (inet_pton(AF_INET, ip.c_str(), buffer) != 1 &&
        inet_pton(AF_INET6, ip.c_str(), buffer) != 1) {
      return Fail("--ip " + ip + " is not an IPv4 or IPv6 address");
    }
    san += ",IP:" + ip;
  }
  const std::string ca_cert_path = request.ca_dir + "/ca.crt";
  const std::string ca_key_path = request.ca_dir + "/ca.key";

  BioPtr cert_bio(BIO_new_file(ca_cert_path.c_str(), "r"));
  if (!cert_bio) {
    ERR_clear_error();
    return Fail("cannot read the CA certificate " + ca_cert_path + ": " + std::strerror(errno) +
                " (run `tern tls init --dir " + request.ca_dir + "` first)");
  }
  CertPtr ca_cert(PEM_read_bio_X509(cert_bio.get(), nullptr, nullptr, nullptr));
  if (!ca_cert)
    return Fail("cannot parse the CA certificate " + ca_cert_path + ": " + OpenSslError());
  if (auto ok = CheckKeyFile(ca_key_path); !ok) return Fail(ok.error().message);
  BioPtr key_bio(BIO_new_file(ca_key_path.c_str(), "r"));
  if (!key_bio) return Fail("cannot read the CA key " + ca_key_path + ": " + OpenSslError());
  KeyPtr ca_key(PEM_read_bio_PrivateKey(key_bio.get(), nullptr, nullptr, nullptr));
  if (!ca_key) return Fail("cannot parse the CA key " + ca_key_path + ": " + OpenSslError());
  if (X509_check_private_key(ca_cert.get(), ca_key.get()) != 1) {
    ERR_clear_error();
    return Fail("the CA key " + ca_key_path + " does not match " + ca_cert_path);
  }

  const std::string out_dir = request.out_dir.empty() ? request.ca_dir : request.out_dir;
  if (auto made = MakeDirectory(out_dir); !made) return Fail(made.error().message);
  auto key = NewP256Key();
  if (!key) return Fail(key.error().message);
  auto cert = NewCertificate(key->get(), request.node, request.valid_days);
  if (!cert) return Fail(cert.error().message);
  X509* x = cert->get();
  X509_set_issuer_name(x, X509_get_subject_name(ca_cert.get()));
  for (const auto& [nid, value] :
       {std::pair{NID_basic_constraints, std::string("critical,CA:FALSE")},
        std::pair{NID_key_usage, std::string("critical,digitalSignature")},
        std::pair{NID_ext_key_usage, std::string("serverAuth,clientAuth")},
        std::pair{NID_subject_alt_name, san},
        std::pair{NID_subject_key_identifier, std::string("hash")},
        std::pair{NID_authority_key_identifier, std::string("keyid:always")}}) {
    if (auto added = AddExtension(x, ca_cert.get(), nid, value); !added)
      return Fail(added.error().message);
  }
  if (X509_sign(x, ca_key.get(), EVP_sha256()) == 0) {
    return Fail("cannot sign the certificate of " + request.node + ": " + OpenSslError());
  }
  NodeCertPaths paths{out_dir + "/" + request.node + ".crt", out_dir + "/" + request.node + ".key"};
  if (auto wrote = WritePair(paths.cert, x, paths.key, key->get(), request.force); !wrote) {
    return Fail(wrote.error().message);
  }
  return paths;
}

}  // namespace tern::ipc
