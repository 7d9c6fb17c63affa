// Making the cluster's TLS material (what `tern tls init` and `tern tls issue` do), with
// OpenSSL's C API.
//
// Contract:
//  - CreateClusterCa(dir) writes dir/ca.crt (0644) and dir/ca.key (0600): an EC P-256 key and a
//    self-signed CA certificate, CN "tern cluster CA <16 random hex digits>", valid 10 years,
//    basicConstraints CA:TRUE pathlen:0, keyUsage keyCertSign+cRLSign. The directory is made
//    (0755) when missing.
//  - IssueNodeCertificate(request) reads ca_dir/ca.crt and ca_dir/ca.key (the key checked like
//    every key: regular, root's, 0600) and writes out_dir/NODE.crt (0644) and out_dir/NODE.key
//    (0600): an EC P-256 key and a certificate with CN = NODE, SAN dNSName NODE plus one IP SAN
//    per `ips` entry, EKU serverAuth+clientAuth, CA:FALSE, valid 5 years, signed by the CA.
//  - Neither overwrites an existing file unless `force`; files are written without following
//    a symlink in their place. Node names are letters, digits, '-' and '_' (as [node] name).
//  - Every failure is one readable line; nothing is left half-written (a failed write removes
//    what it created).
//
// Thread-safety: reentrant (OpenSSL 3 needs no global set-up).
#pragma once

#include <string>
#include <tern/expected.hpp>
#include <vector>

namespace tern::ipc {

struct CaPaths {
  std::string cert;
  std::string key;
};

Expected<CaPaths> CreateClusterCa(const std::string& dir, bool force = false);

struct NodeCertRequest {
  std::string node;
  std::vector<std::string> ips;  // IPv4 or IPv6 literals
  std::string ca_dir;            // holds ca.crt and ca.key
  std::string out_dir;           // where NODE.crt and NODE.key go (default: ca_dir)
  bool force = false;
  int valid_days = 5 * 365;
};

struct NodeCertPaths {
  std::string cert;
  std::string key;
};

Expected<NodeCertPaths> IssueNodeCertificate(const NodeCertRequest& request);

// Letters, digits, '-' and '_', 1..63 characters: what a node name (and a cert's DNS SAN) may be.
bool IsValidNodeName(const std::string& name);

}  // namespace tern::ipc
