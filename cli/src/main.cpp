// tern: the command line of tern. A client of the local agent's API (docs/api.md).
#include <CLI/CLI.hpp>
#include <iostream>

#include "tern/cli/commands.hpp"
#include "tern/cli/doctor.hpp"
#include "tern/cli/node_files_check.hpp"
#include "tern/cli/tls_command.hpp"
#include "tern/cli/token.hpp"
#include "tern/cli/top.hpp"

namespace {

using tern::cli::Output;

struct ListingFlags {
  std::string output = "table";
  bool watch = false;
  double interval = 2.0;
};

void AddListingFlags(CLI::App* command, ListingFlags& flags) {
  command->add_option("-o,--output", flags.output, "table or json")
      ->check(CLI::IsMember({"table", "json"}));
  command->add_flag("-w,--watch", flags.watch, "redraw every --interval seconds until interrupted");
  command->add_option("--interval", flags.interval, "seconds between --watch redraws")
      ->check(CLI::PositiveNumber);
}

int RunListing(tern::cli::Context& context, const ListingFlags& flags,
               const std::function<int(tern::cli::Context&, Output)>& render) {
  const Output output = flags.output == "json" ? Output::kJson : Output::kTable;
  if (!flags.watch) return render(context, output);
  return tern::cli::Watch(context, flags.interval, output == Output::kJson,
                          [&](tern::cli::Context& snapshot) { return render(snapshot, output); });
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"tern — run, watch and move jobs on a tern cluster"};
  app.require_subcommand(1);
  app.fallthrough();
  std::string socket_flag;
  app.add_option("--node-socket", socket_flag,
                 "the agent's Unix socket (default: $TERN_SOCKET or /run/tern/ternd.sock)");

  tern::cli::SubmitOptions submit;
  auto* submit_cmd =
      app.add_subcommand("submit", "run a command as a job (tern submit -- CMD ARGS)");
  submit_cmd->add_option("--node", submit.node,
                         "node to run on (default: the balancer places it, this node on ties)");
  submit_cmd->add_option("--name", submit.name, "job name (default: the command's name)");
  submit_cmd->add_option("--user", submit.user, "run as this user (root only)");
  submit_cmd->add_option("-e,--env", submit.env, "set NAME=VALUE in the job's environment");
  submit_cmd->add_flag("-q,--quiet", submit.quiet, "print only the job id");
  submit_cmd->add_flag("--pin", submit.pin, "the balancer never moves the job (tern unpin)");
  submit_cmd->add_flag("--net", submit.net,
                       "give the job its own network namespace and a cluster-routable address "
                       "that moves with it (docs/networking.md)");
  submit_cmd->add_option("command", submit.argv, "the command and its arguments")->required();
  submit_cmd->positionals_at_end();

  bool ps_all = false;
  ListingFlags ps_flags;
  auto* ps_cmd = app.add_subcommand("ps", "list running jobs across the cluster");
  ps_cmd->add_flag("-a,--all", ps_all, "include jobs that have ended");
  AddListingFlags(ps_cmd, ps_flags);

  std::string status_id;
  ListingFlags status_flags;
  auto* status_cmd = app.add_subcommand("status", "show one job");
  status_cmd->add_option("job", status_id, "job id (a unique prefix is enough)")->required();
  AddListingFlags(status_cmd, status_flags);

  std::string logs_id;
  bool logs_follow = false;
  bool logs_stderr = false;
  auto* logs_cmd = app.add_subcommand("logs", "print a job's output, from any node");
  logs_cmd->add_option("job", logs_id, "job id (a unique prefix is enough)")->required();
  logs_cmd->add_flag("-f,--follow", logs_follow, "keep printing until the job ends");
  logs_cmd->add_flag("--stderr", logs_stderr, "the job's stderr instead of its stdout");

  std::vector<std::string> cancel_ids;
  auto* cancel_cmd =
      app.add_subcommand("cancel", "stop jobs (TERM, then KILL after a grace period)");
  cancel_cmd->add_option("job", cancel_ids, "job ids")->required();

  ListingFlags nodes_flags;
  auto* nodes_cmd = app.add_subcommand("nodes", "list the cluster's nodes");
  AddListingFlags(nodes_cmd, nodes_flags);

  std::string migrate_id, migrate_node, migrate_mode = "precopy";
  bool migrate_dry_run = false;
  std::string migrate_output = "table";
  auto* migrate_cmd = app.add_subcommand("migrate", "move a running job to another node");
  migrate_cmd->add_option("job", migrate_id, "job id (a unique prefix is enough)")->required();
  migrate_cmd->add_option("node", migrate_node, "destination node")->required();
  migrate_cmd->add_option("--mode", migrate_mode, "precopy or postcopy")
      ->check(CLI::IsMember({"precopy", "postcopy"}));
  migrate_cmd->add_flag("--dry-run", migrate_dry_run, "only say whether the job can move");
  migrate_cmd->add_option("-o,--output", migrate_output, "table or json")
      ->check(CLI::IsMember({"table", "json"}));

  std::string recover_id;
  bool recover_resume = false;
  bool recover_discard = false;
  auto* recover_cmd = app.add_subcommand(
      "recover",
      "decide a blocked move (tern status says which): resume the stopped copy here or discard "
      "it; refused while the outcome can still be learned (root)");
  recover_cmd->add_option("job", recover_id, "job id (a unique prefix is enough)")->required();
  auto* resume_flag = recover_cmd->add_flag(
      "--resume-here", recover_resume,
      "run the copy this node holds (only once its source is gone for good: a source that comes "
      "back would resume its own copy too)");
  auto* discard_flag = recover_cmd->add_flag("--discard", recover_discard,
                                             "remove the copy this node holds; the job ends here");
  resume_flag->excludes(discard_flag);
  recover_cmd->callback([&] {
    if (!recover_resume && !recover_discard) {
      throw CLI::RequiredError("--resume-here or --discard");
    }
  });

  bool doctor_json = false;  // set from -o below
  auto* doctor_cmd = app.add_subcommand("doctor", "check what tern needs on this machine");
  std::string doctor_output = "table";
  doctor_cmd->add_option("-o,--output", doctor_output, "table or json")
      ->check(CLI::IsMember({"table", "json"}));
  std::string doctor_config = "/etc/tern/ternd.toml";
  doctor_cmd->add_option("-c,--config", doctor_config,
                         "the agent's config: its secret and certificates are checked too");

  std::vector<std::string> pin_ids, unpin_ids;
  auto* pin_cmd =
      app.add_subcommand("pin", "keep jobs where they are: the balancer never moves them");
  pin_cmd->add_option("job", pin_ids, "job ids")->required();
  auto* unpin_cmd = app.add_subcommand("unpin", "let the balancer move jobs again");
  unpin_cmd->add_option("job", unpin_ids, "job ids")->required();

  std::string drain_node, undrain_node;
  auto* drain_cmd = app.add_subcommand(
      "drain", "move every job off a node by live migration; it takes no new ones (root)");
  drain_cmd->add_option("node", drain_node, "the node to empty")->required();
  auto* undrain_cmd = app.add_subcommand("undrain", "let a drained node take jobs again (root)");
  undrain_cmd->add_option("node", undrain_node, "the node")->required();

  tern::cli::EventsOptions events;
  std::string events_output = "table";
  auto* events_cmd = app.add_subcommand(
      "events", "recent events of every node (jobs, migrations, nodes, balancer), by time");
  events_cmd->add_flag("-f,--follow", events.follow,
                       "keep printing every node's new events until interrupted (the agent's "
                       "cluster-wide stream; resumes where it was after an agent restart)");
  events_cmd->add_flag("-A,--all-nodes", events.all_nodes,
                       "kept for scripts: -f always follows every node");
  events_cmd->add_option("-t,--type", events.type, "only job, migration, node or balancer events")
      ->check(CLI::IsMember({"job", "migration", "node", "balancer"}));
  events_cmd->add_option("-n,--limit", events.limit, "at most this many recent events (1-1000)")
      ->check(CLI::Range(1, 1000));
  events_cmd->add_option("-o,--output", events_output, "table or json (one event per line)")
      ->check(CLI::IsMember({"table", "json"}));

  auto* top_cmd = app.add_subcommand(
      "top", "live view of the cluster: nodes with load bars, jobs, migrations (q quits)");

  auto* version_cmd = app.add_subcommand("version", "print the versions of tern and the agent");

  tern::cli::TokenOptions token;
  auto* token_cmd = app.add_subcommand("token", "bearer tokens of the agents' TCP API (root)");
  token_cmd->require_subcommand(1);
  token_cmd->add_option("--file", token.file,
                        "the token file (default: $TERN_TOKENS or /etc/tern/tokens)");
  auto* token_create = token_cmd->add_subcommand(
      "create", "make a token and print it once (read-only unless --admin)");
  bool token_read_only = false;
  auto* read_only_flag =
      token_create->add_flag("--read-only", token_read_only, "GET only (the default)");
  token_create->add_flag("--admin", token.admin, "acts as root: submit, cancel, migrate, drain")
      ->excludes(read_only_flag);
  token_create->add_option("--name", token.name, "a name for list and revoke (default token-N)");
  auto* token_list = token_cmd->add_subcommand("list", "the tokens (names, access, hash prefix)");
  auto* token_revoke = token_cmd->add_subcommand("revoke", "remove a token; it stops at once");
  token_revoke->add_option("name", token.name, "the token's name")->required();
  tern::cli::TlsCommand tls;
  tern::cli::AddTlsCommands(app, tls);

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& help) {
    return app.exit(help);
  } catch (const CLI::CallForAllHelp& help) {
    return app.exit(help);
  } catch (const CLI::ParseError& error) {
    if (argc == 1) {
      std::cerr << app.help();
      return 2;
    }
    app.exit(error);
    return 2;
  }

  if (*token_cmd) {
    using Action = tern::cli::TokenOptions::Action;
    token.action = *token_create ? Action::kCreate : *token_list ? Action::kList : Action::kRevoke;
    return tern::cli::Token(token, std::cout, std::cerr);
  }
  if (*tls.tls) return tern::cli::RunTlsCommand(tls, std::cout, std::cerr);

  tern::cli::Context context{tern::cli::AgentClient(tern::cli::ResolveSocketPath(socket_flag)),
                             std::cout, std::cerr};
  if (*submit_cmd) return tern::cli::Submit(context, submit);
  if (*ps_cmd) {
    return RunListing(context, ps_flags,
                      [&](tern::cli::Context& c, Output o) { return tern::cli::Ps(c, ps_all, o); });
  }
  if (*status_cmd) {
    return RunListing(context, status_flags, [&](tern::cli::Context& c, Output o) {
      return tern::cli::Status(c, status_id, o);
    });
  }
  if (*logs_cmd) {
    return tern::cli::Logs(context, logs_id, logs_follow, logs_stderr ? "stderr" : "stdout");
  }
  if (*cancel_cmd) return tern::cli::Cancel(context, cancel_ids);
  if (*recover_cmd) return tern::cli::Recover(context, recover_id, recover_resume);
  if (*migrate_cmd) {
    return tern::cli::Migrate(context, migrate_id, migrate_node, migrate_mode, migrate_dry_run,
                              migrate_output == "json" ? Output::kJson : Output::kTable);
  }
  if (*nodes_cmd) return RunListing(context, nodes_flags, tern::cli::Nodes);
  if (*doctor_cmd) {
    doctor_json = doctor_output == "json";
    auto checks = tern::cli::RunDoctor(context.client);
    for (auto& check : tern::cli::CheckNodeFiles(doctor_config, doctor_cmd->count("--config") == 0))
      checks.push_back(std::move(check));
    return tern::cli::PrintDoctor(checks, doctor_json, std::cout);
  }
  if (*version_cmd) return tern::cli::Version(context);
  if (*top_cmd) return tern::cli::Top(context);
  if (*events_cmd) {
    events.output = events_output == "json" ? Output::kJson : Output::kTable;
    return tern::cli::Events(context, events);
  }
  if (*pin_cmd) return tern::cli::Pin(context, pin_ids, true);
  if (*unpin_cmd) return tern::cli::Pin(context, unpin_ids, false);
  if (*drain_cmd) return tern::cli::Drain(context, drain_node, true);
  if (*undrain_cmd) return tern::cli::Drain(context, undrain_node, false);
  return 2;
}
