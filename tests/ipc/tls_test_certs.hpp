// Test certificates: a throw-away cluster CA in a temporary directory and node certificates
// from it, made with the same code as `tern tls` (tern/ipc/tls_issue.hpp).
//
// Thread-safety: one per test; not shared between threads.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <string>
#include <tern/ipc/tls_files.hpp>
#include <tern/ipc/tls_issue.hpp>

namespace tern::ipc::testing {

class TestCa {
 public:
  TestCa() {
    std::string pattern = (std::filesystem::temp_directory_path() / "tern-tls-XXXXXX").string();
    dir_ = ::mkdtemp(pattern.data());
    auto made = CreateClusterCa(dir_);
    if (!made) ADD_FAILURE() << made.error().message;
  }
  ~TestCa() {
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }
  TestCa(const TestCa&) = delete;
  TestCa& operator=(const TestCa&) = delete;

  const std::string& dir() const { return dir_; }

  // The files of a node certificate for `node`, issued once by this CA.
  TlsFiles Issue(const std::string& node) {
    NodeCertRequest request;
    request.node = node;
    request.ips = {"127.0.0.1"};
    request.ca_dir = dir_;
    request.force = true;
    auto issued = IssueNodeCertificate(request);
    if (!issued) ADD_FAILURE() << issued.error().message;
    return TlsFiles{dir_ + "/ca.crt", dir_ + "/" + node + ".crt", dir_ + "/" + node + ".key"};
  }

 private:
  std::string dir_;
};

}  // namespace tern::ipc::testing
