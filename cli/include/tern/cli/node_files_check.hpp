// tern doctor's checks of a node's own files: the agent's config, the cluster secret and the TLS
// material the config names, as an installed node (the .deb, deploy/ansible) has them.
//
// Contract:
//  - CheckNodeFiles(config_path, default_path) reads the TOML config and returns one Check each
//    for: the config, the seeds, the secret, and the TLS files. No file at the default path is
//    not an installed node (a build tree, a local cluster): one "ok" config check, nothing else;
//    no file at a path given by the user fails. The TLS check fails when a file is missing, the key
//    is not root's and 0600, the key does not match the certificate, the certificate is not signed
//    by the CA or has expired, or its name is not the node's name ([node] name, default the host
//    name).
//  - Every fix names the command that repairs it (tern tls issue, chmod, ...). Nothing is
//    written.
//
// Thread-safety: reentrant.
#pragma once

#include <string>
#include <vector>

#include "tern/cli/doctor.hpp"

namespace tern::cli {

std::vector<Check> CheckNodeFiles(const std::string& config_path, bool default_path);

}  // namespace tern::cli
