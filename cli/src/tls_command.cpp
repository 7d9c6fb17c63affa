#include "tern/cli/tls_command.hpp"

#include <ostream>
#include <tern/ipc/tls_issue.hpp>

namespace tern::cli {

void AddTlsCommands(CLI::App& app, TlsCommand& command) {
  command.tls = app.add_subcommand("tls", "make the cluster CA and node certificates");
  command.tls->require_subcommand(1);
  command.init = command.tls->add_subcommand(
      "init", "make the cluster CA (ca.crt, ca.key) in --dir; once per cluster");
  command.init->add_option("--dir", command.dir, "where ca.crt and ca.key go")
      ->capture_default_str();
  command.init->add_flag("--force", command.force, "replace an existing CA");
  command.issue =
      command.tls->add_subcommand("issue", "make NODE.crt and NODE.key, signed by the CA in --dir");
  command.issue->add_option("node", command.node, "the node's name ([node] name)")->required();
  command.issue->add_option("--ip", command.ips, "an IP address to name in the certificate");
  command.issue->add_option("--dir", command.dir, "where ca.crt and ca.key are")
      ->capture_default_str();
  command.issue->add_option("--out", command.out,
                            "where NODE.crt and NODE.key go (default: --dir)");
  command.issue->add_flag("--force", command.force, "replace existing files");
}

int RunTlsCommand(const TlsCommand& command, std::ostream& out, std::ostream& err) {
  if (command.init != nullptr && *command.init) {
    auto made = ipc::CreateClusterCa(command.dir, command.force);
    if (!made) {
      err << "tern tls init: " << made.error().message << "\n";
      return 1;
    }
    out << "wrote " << made->cert << " and " << made->key << " (keep " << made->key
        << " secret: whoever has it can make nodes)\n"
        << "next: tern tls issue NODE --dir " << command.dir << " for each node\n";
    return 0;
  }
  ipc::NodeCertRequest request;
  request.node = command.node;
  request.ips = command.ips;
  request.ca_dir = command.dir;
  request.out_dir = command.out;
  request.force = command.force;
  auto issued = ipc::IssueNodeCertificate(request);
  if (!issued) {
    err << "tern tls issue: " << issued.error().message << "\n";
    return 1;
  }
  out << "wrote " << issued->cert << " and " << issued->key << "\n"
      << "install on " << command.node << ": " << command.dir << "/ca.crt as /etc/tern/tls/ca.crt, "
      << issued->cert << " as /etc/tern/tls/node.crt, " << issued->key
      << " as /etc/tern/tls/node.key (root, mode 0600)\n";
  return 0;
}

}  // namespace tern::cli
