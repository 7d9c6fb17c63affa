#include "tern/cli/node_files_check.hpp"

#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>
#include <toml++/toml.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <memory>

#include "tern/ipc/tls_files.hpp"

namespace tern::cli {
namespace {

// What the checks need from ternd.toml, with the agent's defaults (docs/config.md).
struct NodeFiles {
  std::string name;
  std::size_t seeds = 0;
  bool inline_secret = false;
  std::string secret_file = "/etc/tern/secret";
  ipc::TlsFiles tls;
};

std::string HostName() {
  char name[256] = {};
  if (::gethostname(name, sizeof name - 1) != 0) return "";
  return name;
}

using X509Ptr = std::unique_ptr<X509, decltype(&X509_free)>;

X509Ptr ReadCertificate(const std::string& path) {
  std::unique_ptr<FILE, int (*)(FILE*)> file(std::fopen(path.c_str(), "r"), std::fclose);
  if (!file) return {nullptr, X509_free};
  return {PEM_read_X509(file.get(), nullptr, nullptr, nullptr), X509_free};
}

Check CheckTls(const NodeFiles& files) {
  const std::string issue_fix = "on the machine with the cluster CA: tern tls issue " +
                                (files.name.empty() ? std::string("NODE") : files.name) +
                                " --dir CA_DIR --out OUT, then install it (docs/operations.md)";
  for (const auto& path : {files.tls.ca, files.tls.cert, files.tls.key}) {
    if (!std::filesystem::exists(path)) {
      return {"certificates", "fail", "missing " + path, issue_fix};
    }
  }
  if (auto key = ipc::CheckKeyFile(files.tls.key); !key) {
    return {"certificates", "fail", key.error().message,
            "chown root:root " + files.tls.key + " && chmod 0600 " + files.tls.key};
  }
  if (auto context = ipc::MakeTlsContext(files.tls, ipc::TlsRole::kServer); !context) {
    return {"certificates", "fail", context.error().message, issue_fix};
  }
  auto ca = ReadCertificate(files.tls.ca);
  auto cert = ReadCertificate(files.tls.cert);
  if (!ca || !cert) {
    return {"certificates", "fail", "cannot read " + (ca ? files.tls.cert : files.tls.ca),
            issue_fix};
  }
  std::unique_ptr<X509_STORE, decltype(&X509_STORE_free)> store(X509_STORE_new(), X509_STORE_free);
  std::unique_ptr<X509_STORE_CTX, decltype(&X509_STORE_CTX_free)> verify(X509_STORE_CTX_new(),
                                                                         X509_STORE_CTX_free);
  if (!store || !verify || X509_STORE_add_cert(store.get(), ca.get()) != 1 ||
      X509_STORE_CTX_init(verify.get(), store.get(), cert.get(), nullptr) != 1) {
    return {"certificates", "fail", "OpenSSL could not set up a verification", ""};
  }
  if (X509_verify_cert(verify.get()) != 1) {
    const int error = X509_STORE_CTX_get_error(verify.get());
    return {
        "certificates", "fail",
        files.tls.cert + " against " + files.tls.ca + ": " + X509_verify_cert_error_string(error),
        issue_fix};
  }
  if (!files.name.empty() &&
      X509_check_host(cert.get(), files.name.c_str(), files.name.size(), 0, nullptr) != 1) {
    return {"certificates", "fail",
            files.tls.cert + " is not for node '" + files.name + "' (the [node] name)", issue_fix};
  }
  return {"certificates", "ok",
          "node '" + files.name + "': " + files.tls.cert + " signed by " + files.tls.ca, ""};
}

Check CheckSecret(const NodeFiles& files) {
  if (files.inline_secret) return {"secret", "ok", "[cluster] secret is set in the config", ""};
  const std::string make =
      "copy the cluster's secret to " + files.secret_file + " (the same on every node), mode 0600";
  struct stat info {};
  if (::stat(files.secret_file.c_str(), &info) != 0) {
    return {"secret", "fail", "no " + files.secret_file, make};
  }
  if ((info.st_mode & 077) != 0) {
    return {"secret", "fail", files.secret_file + " can be read by others",
            "chmod 0600 " + files.secret_file};
  }
  if (info.st_size == 0) return {"secret", "fail", files.secret_file + " is empty", make};
  return {"secret", "ok", files.secret_file, ""};
}

}  // namespace

std::vector<Check> CheckNodeFiles(const std::string& config_path, bool default_path) {
  std::vector<Check> checks;
  NodeFiles files;
  const bool present = std::filesystem::exists(config_path);
  if (!present && !default_path) {
    checks.push_back({"config", "fail", "no " + config_path, "pass the agent's --config path"});
    return checks;
  }
  if (present) {
    toml::table table;
    try {
      table = toml::parse_file(config_path);
    } catch (const toml::parse_error& error) {
      checks.push_back({"config", "fail",
                        config_path + ":" + std::to_string(error.source().begin.line) + ": " +
                            std::string(error.description()),
                        "fix the file (docs/config.md has every key)"});
      return checks;
    }
    files.name = table["node"]["name"].value_or(std::string());
    if (const auto* seeds = table["cluster"]["seeds"].as_array()) files.seeds = seeds->size();
    files.inline_secret = !table["cluster"]["secret"].value_or(std::string()).empty();
    files.secret_file = table["cluster"]["secret_file"].value_or(files.secret_file);
    files.tls.ca = table["tls"]["ca"].value_or(files.tls.ca);
    files.tls.cert = table["tls"]["cert"].value_or(files.tls.cert);
    files.tls.key = table["tls"]["key"].value_or(files.tls.key);
    checks.push_back({"config", "ok", config_path, ""});
  } else {
    // Not an installed node (a build tree, or a local cluster with its files under
    // /var/lib/tern-cluster): nothing of its own to check.
    checks.push_back({"config", "ok",
                      "no " + config_path + ": not an installed node (--config FILE checks one)",
                      ""});
    return checks;
  }
  if (files.name.empty()) files.name = HostName();
  checks.push_back(files.seeds > 0
                       ? Check{"seeds", "ok", std::to_string(files.seeds) + " seed(s)", ""}
                       : Check{"seeds", "warn", "[cluster] seeds is empty: this node joins nobody",
                               "fine for the first node; others list it: seeds = [\"HOST:7071\"]"});
  checks.push_back(CheckSecret(files));
  checks.push_back(CheckTls(files));
  return checks;
}

}  // namespace tern::cli
