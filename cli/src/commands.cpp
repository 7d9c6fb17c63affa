#include "tern/cli/commands.hpp"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <iostream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>

#include "tern/cli/event_follow.hpp"
#include "tern/cli/format.hpp"

#ifndef TERN_VERSION
#define TERN_VERSION "0.0.0"
#endif

namespace tern::cli {
namespace {

using nlohmann::json;

// One API call; on failure prints the one-line reason and yields nullopt.
std::optional<HttpReply> Call(Context& context, const std::string& method,
                              const std::string& target, const std::string& body = "") {
  auto reply = context.client.Request(method, target, body);
  if (!reply) {
    context.err << "tern: " << reply.error().message << "\n";
    return std::nullopt;
  }
  if (!reply->ok()) {
    context.err << "tern: " << reply->ErrorMessage() << "\n";
    return std::nullopt;
  }
  return *reply;
}

std::optional<json> CallJson(Context& context, const std::string& method, const std::string& target,
                             const std::string& body = "") {
  auto reply = Call(context, method, target, body);
  if (!reply) return std::nullopt;
  json parsed = json::parse(reply->body, nullptr, false);
  if (parsed.is_discarded()) {
    context.err << "tern: the agent sent something that is not JSON\n";
    return std::nullopt;
  }
  return parsed;
}

std::string Str(const json& object, const char* key) {
  if (!object.contains(key) || object[key].is_null()) return "";
  if (object[key].is_string()) return object[key].get<std::string>();
  return object[key].dump();
}

double Num(const json& object, const char* key) {
  return object.contains(key) && object[key].is_number() ? object[key].get<double>() : 0.0;
}

void WarnUnreachable(Context& context, const json& body) {
  if (body.contains("unreachable") && body["unreachable"].is_array() &&
      !body["unreachable"].empty()) {
    std::string names;
    for (const auto& node : body["unreachable"])
      names += (names.empty() ? "" : ", ") + Str(json{{"n", node}}, "n");
    context.err << "tern: warning: no answer from " << names << "; their jobs are not listed\n";
  }
}

std::string CommandLine(const json& argv) {
  std::string line;
  for (const auto& arg : argv) {
    const std::string text = arg.get<std::string>();
    const bool plain = !text.empty() && text.find_first_of(" \t\"'$\\") == std::string::npos;
    line += (line.empty() ? "" : " ") + (plain ? text : json(text).dump());
  }
  return line;
}

}  // namespace

std::string EncodePathSegment(const std::string& text) {
  static const char* digits = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : text) {
    if (std::isalnum(c) || c == '.' || c == '-' || c == '_' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      out += {'%', digits[c >> 4], digits[c & 15]};
    }
  }
  return out;
}

Expected<std::string> SubmitBody(const SubmitOptions& options,
                                 const std::map<std::string, std::string>& environment) {
  json env = json::object();
  for (const auto& [key, value] : environment) env[key] = value;
  for (const auto& pair : options.env) {
    const auto equals = pair.find('=');
    if (equals == std::string::npos || equals == 0) {
      return Fail("--env wants NAME=VALUE, got '" + pair + "'");
    }
    env[pair.substr(0, equals)] = pair.substr(equals + 1);
  }
  env.erase("TERN_SOCKET");
  json body = {{"argv", options.argv}, {"env", env}};
  if (!options.node.empty()) body["node"] = options.node;
  if (!options.name.empty()) body["name"] = options.name;
  if (!options.user.empty()) body["user"] = options.user;
  if (options.pin) body["pin"] = true;
  if (options.net) body["net"] = true;
  return body.dump();
}

int Submit(Context& context, const SubmitOptions& options) {
  std::map<std::string, std::string> environment;
  for (char** entry = environ; entry != nullptr && *entry != nullptr; ++entry) {
    const std::string text = *entry;
    const auto equals = text.find('=');
    if (equals != std::string::npos) environment[text.substr(0, equals)] = text.substr(equals + 1);
  }
  auto body = SubmitBody(options, environment);
  if (!body) {
    context.err << "tern: " << body.error().message << "\n";
    return 2;
  }
  auto job = CallJson(context, "POST", "/v1/jobs", *body);
  if (!job) return 1;
  if (Str(*job, "state") == "failed") {
    context.err << "tern: job " << Str(*job, "id") << " could not start: " << Str(*job, "error")
                << "\n";
    return 1;
  }
  if (options.quiet) {
    context.out << Str(*job, "id") << "\n";
  } else {
    context.out << "submitted " << Str(*job, "id") << " (" << Str(*job, "name") << ") on "
                << Str(*job, "node") << (job->value("pinned", false) ? ", pinned" : "")
                << (Str(*job, "address").empty() ? "" : ", address " + Str(*job, "address"))
                << "\n";
  }
  return 0;
}

int Ps(Context& context, bool all, Output output) {
  auto body = CallJson(context, "GET", "/v1/jobs");
  if (!body) return 1;
  WarnUnreachable(context, *body);
  json shown = json::array();
  for (const auto& job : (*body)["jobs"]) {
    if (all || Str(job, "state") == "running") shown.push_back(job);
  }
  if (output == Output::kJson) {
    context.out << shown.dump(2) << "\n";
    return 0;
  }
  Table table({"ID", "NAME", "USER", "NODE", "STATE", "CPU", "RSS", "AGE"});
  for (const auto& job : shown) {
    std::string state = Str(job, "state");
    if (state == "exited") state += "(" + Str(job, "exit_code") + ")";
    if (state == "killed") state += "(" + Str(job, "signal") + ")";
    if (job.value("pinned", false) && Str(job, "state") == "running") state += ",pinned";
    table.Add({Str(job, "id"), Str(job, "name"), Str(job, "user"), Str(job, "node"), state,
               HumanCpu(Num(job, "cpu_seconds")),
               HumanBytes(static_cast<std::uint64_t>(Num(job, "rss_bytes"))),
               HumanAge(Num(job, "age_seconds"))});
  }
  context.out << table.Render();
  return 0;
}

int Status(Context& context, const std::string& id, Output output) {
  auto job = CallJson(context, "GET", "/v1/jobs/" + EncodePathSegment(id));
  if (!job) return 1;
  if (output == Output::kJson) {
    context.out << job->dump(2) << "\n";
    return 0;
  }
  Table table({"id:", Str(*job, "id")});
  auto row = [&](const char* label, const std::string& value) {
    if (!value.empty()) table.Add({label, value});
  };
  row("name:", Str(*job, "name"));
  row("user:", Str(*job, "user") + " (uid " + Str(*job, "uid") + ", gid " + Str(*job, "gid") + ")");
  row("node:", Str(*job, "node"));
  row("home node:", Str(*job, "home_node"));
  row("state:", Str(*job, "state"));
  row("pinned:", job->value("pinned", false) ? "yes (the balancer does not move it)" : "");
  row("address:", Str(*job, "address"));
  row("exit code:", Str(*job, "exit_code"));
  row("signal:", Str(*job, "signal"));
  row("command:", CommandLine((*job)["argv"]));
  row("pid:", Str(*job, "state") == "running" ? Str(*job, "pid") : "");
  row("submitted:", Str(*job, "submitted_at"));
  row("started:", Str(*job, "started_at"));
  row("ended:", Str(*job, "ended_at"));
  row("cpu:", HumanCpu(Num(*job, "cpu_seconds")));
  row("rss:", HumanBytes(static_cast<std::uint64_t>(Num(*job, "rss_bytes"))));
  row("age:", HumanAge(Num(*job, "age_seconds")));
  row("dir:", Str(*job, "dir"));
  if (job->contains("ipc_rights") && Num(*job, "ipc_rights") > 0) {
    row("ipc rights:", Str(*job, "ipc_rights"));
  }
  row("error:", Str(*job, "error"));
  if (job->contains("blocked") && (*job)["blocked"].is_object()) {
    // A move that cannot finish by itself: why, and what the user can do.
    const json& blocked = (*job)["blocked"];
    row("blocked:", Str(blocked, "state") + " (migration " + Str(blocked, "migration") + " from " +
                        Str(blocked, "from") + "): " + Str(blocked, "reason"));
    row("recover:", Str(blocked, "recover"));
  }
  if (job->contains("migrations") && (*job)["migrations"].is_array() &&
      !(*job)["migrations"].empty()) {
    const json& last = (*job)["migrations"].back();
    char text[160];
    std::snprintf(
        text, sizeof text, "%zu, last %s -> %s (%s), dump %.0f ms, %s", (*job)["migrations"].size(),
        Str(last, "from").c_str(), Str(last, "to").c_str(), Str(last, "mode").c_str(),
        Num(last, "dump_ms"),
        HumanBytes(static_cast<std::uint64_t>(Num(last, "pages_bytes") + Num(last, "images_bytes")))
            .c_str());
    row("migrations:", text);
  }
  context.out << table.Render();
  return 0;
}

int Logs(Context& context, const std::string& id, bool follow, const std::string& stream) {
  std::uint64_t offset = 0;
  // Both streams go to our stdout, as with `kubectl logs`: the user picked the stream.
  std::ostream& sink = context.out;
  while (true) {
    auto reply = Call(context, "GET",
                      "/v1/jobs/" + EncodePathSegment(id) + "/logs?stream=" + stream +
                          "&offset=" + std::to_string(offset));
    if (!reply) return 1;
    sink << reply->body;
    sink.flush();
    try {
      offset = std::stoull(reply->Header("x-tern-next-offset"));
    } catch (const std::exception&) {
      context.err << "tern: the agent's log answer has no next offset\n";
      return 1;
    }
    const std::string state = reply->Header("x-tern-job-state");
    if (!follow) return 0;
    if (state != "running" && reply->body.empty()) return 0;
    if (reply->body.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
}

int Cancel(Context& context, const std::vector<std::string>& ids) {
  int status = 0;
  for (const auto& id : ids) {
    auto job = CallJson(context, "POST", "/v1/jobs/" + EncodePathSegment(id) + "/cancel");
    if (!job) {
      status = 1;
      continue;
    }
    context.out << "cancelled " << Str(*job, "id") << "\n";
  }
  return status;
}

int Nodes(Context& context, Output output) {
  auto body = CallJson(context, "GET", "/v1/nodes");
  if (!body) return 1;
  if (output == Output::kJson) {
    context.out << (*body)["nodes"].dump(2) << "\n";
    return 0;
  }
  Table table({"NAME", "ADDRESS", "STATE", "LOAD", "DEMAND/CPUS", "MEM USED/LIMIT", "JOBS", "AGE"});
  for (const auto& node : (*body)["nodes"]) {
    char load[16];
    std::snprintf(load, sizeof load, "%.2f", Num(node, "load"));
    // Older agents send no capacity: their CPU count stands in, and their memory as before.
    const double capacity = Num(node, "capacity") > 0 ? Num(node, "capacity") : Num(node, "cpus");
    char cpu[32];
    std::snprintf(cpu, sizeof cpu, "%.1f/%.1f", Num(node, "demand"), capacity);
    const auto bytes = [&](const char* key) {
      return HumanBytes(static_cast<std::uint64_t>(Num(node, key)));
    };
    const std::string memory = Num(node, "mem_limit_bytes") > 0
                                   ? bytes("mem_used_bytes") + "/" + bytes("mem_limit_bytes")
                                   : bytes("mem_free_bytes") + " free/" + bytes("mem_total_bytes");
    const bool self = node.value("self", false);
    const std::string state =
        Str(node, "state") + (node.value("draining", false) ? ",draining" : "");
    // How old this agent's news of the node is (gossip): "-" when it has none.
    char age[16] = "-";
    if (node.contains("age_ms"))
      std::snprintf(age, sizeof age, "%.1fs", Num(node, "age_ms") / 1000);
    table.Add({Str(node, "name") + (self ? "*" : ""), Str(node, "address"), state, load, cpu,
               memory, Str(node, "jobs"), age});
  }
  context.out << table.Render();
  return 0;
}

int Migrate(Context& context, const std::string& id, const std::string& node,
            const std::string& mode, bool dry_run, Output output) {
  json request = {{"node", node}, {"mode", mode}, {"dry_run", dry_run}};
  auto reply = context.client.Request("POST", "/v1/jobs/" + EncodePathSegment(id) + "/migrate",
                                      request.dump());
  if (!reply) {
    context.err << "tern: " << reply.error().message << "\n";
    return 1;
  }
  json body = json::parse(reply->body, nullptr, false);
  if (output == Output::kJson) {
    context.out << (body.is_discarded() ? json(reply->body) : body).dump(2) << "\n";
    return reply->ok() ? 0 : 1;
  }
  auto print_checks = [&] {
    if (!body.is_object() || !body.contains("checks")) return;
    for (const auto& check : body["checks"]) {
      if (!check.contains("check")) continue;
      context.out << (check.value("ok", false) ? "  ok    " : "  FAIL  ") << Str(check, "check")
                  << ": " << Str(check, "detail") << "\n";
    }
  };
  if (!reply->ok()) {
    print_checks();
    context.err << "tern: " << reply->ErrorMessage() << "\n";
    return 1;
  }
  if (dry_run) {
    print_checks();
    context.out << Str(body, "verdict") << "\n";
    return 0;
  }
  const json& stats = body["migration"];
  char line[256];
  std::snprintf(
      line, sizeof line, "moved %s %s -> %s (%s): freeze %.0f ms, total %.0f ms, %s moved\n",
      Str(body["job"], "id").c_str(), Str(stats, "from").c_str(), Str(stats, "to").c_str(),
      Str(stats, "mode").c_str(), Num(stats, "freeze_ms"), Num(stats, "total_ms"),
      HumanBytes(static_cast<std::uint64_t>(Num(stats, "bytes"))).c_str());
  context.out << line;
  return 0;
}

int Recover(Context& context, const std::string& id, bool resume_here) {
  const json request = {{"choice", resume_here ? "resume-here" : "discard"}};
  auto reply = context.client.Request("POST", "/v1/jobs/" + EncodePathSegment(id) + "/recover",
                                      request.dump());
  if (!reply) {
    context.err << "tern: " << reply.error().message << "\n";
    return 1;
  }
  if (!reply->ok()) {
    context.err << "tern: " << reply->ErrorMessage() << "\n";
    return 1;
  }
  json body = json::parse(reply->body, nullptr, false);
  context.out << (body.is_object() ? Str(body, "job") + ": " + Str(body, "result") : reply->body)
              << "\n";
  return 0;
}

std::string EventLine(const json& event) {
  std::string what;
  const std::string type = Str(event, "type");
  if (type == "job") {
    what = Str(event, "id") + " " + Str(event, "state") + " on " + Str(event, "node");
    if (event.value("pinned", false) && Str(event, "state") == "running") what += " (pinned)";
  } else if (type == "migration") {
    what = Str(event, "job") + " " + Str(event, "event") + " -> " + Str(event, "to");
    if (event.contains("freeze_ms")) {
      char text[64];
      std::snprintf(text, sizeof text, " (freeze %.0f ms)", Num(event, "freeze_ms"));
      what += text;
    }
    if (event.contains("state")) what += " [" + Str(event, "state") + "]";
    if (event.contains("error")) what += ": " + Str(event, "error");
    if (event.contains("detail")) what += ": " + Str(event, "detail");
  } else if (type == "node") {
    what = Str(event, "name") + " is " + Str(event, "state");
  } else if (type == "balancer") {
    const std::string action = Str(event, "action");
    what = action;
    if (!Str(event, "job").empty()) what += " " + Str(event, "job");
    if ((action == "migrate" || action == "place" || action == "failed") &&
        !Str(event, "to").empty()) {
      what += " -> " + Str(event, "to");
    }
    if (!Str(event, "kind").empty()) what += " (" + Str(event, "kind") + ")";
    if (!Str(event, "reason").empty()) what += ": " + Str(event, "reason");
  }
  return Str(event, "time") + "  " + Str(event, "node") + "  " + type + "  " + what;
}

namespace {

bool Wanted(const EventsOptions& options, const json& event) {
  return options.type.empty() || Str(event, "type") == options.type;
}

void PrintEvent(Context& context, const EventsOptions& options, const json& event) {
  context.out << (options.output == Output::kJson ? event.dump() : EventLine(event)) << "\n";
}

std::string RecentTarget(const EventsOptions& options) {
  std::string target = "/v1/events/recent?limit=" + std::to_string(options.limit);
  if (!options.type.empty()) target += "&type=" + EncodePathSegment(options.type);
  return target;
}

}  // namespace

int Events(Context& context, const EventsOptions& options) {
  if (!options.follow) {
    // Every node's kept events, merged by time by the local agent.
    auto body = CallJson(context, "GET", RecentTarget(options));
    if (!body) return 1;
    WarnUnreachable(context, *body);
    if (body->contains("events") && (*body)["events"].is_array()) {
      for (const auto& event : (*body)["events"]) {
        if (Wanted(options, event)) PrintEvent(context, options, event);
      }
    }
    return 0;
  }
  // The cluster-wide stream: every node's events, each node's in order, resumed from the last
  // one seen when the agent restarts.
  auto followed = FollowEvents(
      context.client, true,
      [&](const SseEvent& event) {
        if (Wanted(options, event.data)) {
          PrintEvent(context, options, event.data);
          context.out.flush();
        }
        return true;
      },
      [&](const std::string& why) { context.err << "tern: " << why << "; reconnecting\n"; });
  if (!followed) {
    context.err << "tern: " << followed.error().message << "\n";
    return 1;
  }
  return 0;
}

int Pin(Context& context, const std::vector<std::string>& ids, bool pin) {
  int status = 0;
  for (const auto& id : ids) {
    auto job =
        CallJson(context, "POST", "/v1/jobs/" + EncodePathSegment(id) + (pin ? "/pin" : "/unpin"));
    if (!job) {
      status = 1;
      continue;
    }
    context.out << (pin ? "pinned " : "unpinned ") << Str(*job, "id") << " on " << Str(*job, "node")
                << "\n";
  }
  return status;
}

int Drain(Context& context, const std::string& node, bool drain) {
  auto body = CallJson(context, "POST",
                       "/v1/nodes/" + EncodePathSegment(node) + (drain ? "/drain" : "/undrain"));
  if (!body) return 1;
  if (!drain) {
    context.out << node << " takes new jobs again\n";
  } else if (body->value("balancer", true)) {
    context.out << node << " is draining: it takes no new jobs and moves its jobs away "
                << "(`tern events -f` shows each move)\n";
  } else {
    context.out << node << " is draining: it takes no new jobs; its balancer is off, so its "
                << "jobs stay\n";
  }
  return 0;
}

int Version(Context& context) {
  context.out << "tern " << TERN_VERSION << "\n";
  auto reply = context.client.Request("GET", "/v1/info");
  if (reply && reply->ok()) {
    json info = json::parse(reply->body, nullptr, false);
    if (info.is_object()) {
      context.out << "ternd " << Str(info, "version") << " on node " << Str(info, "node") << "\n";
    }
  }
  return 0;
}

int Watch(Context& context, double interval_seconds, bool json_output,
          const std::function<int(Context&)>& render) {
  const bool terminal = ::isatty(STDOUT_FILENO) == 1;
  const auto interval = std::chrono::milliseconds(static_cast<long>(interval_seconds * 1000));
  // Redraw as soon as the cluster's event stream says something changed, and at least every
  // interval (loads change without events). The stream thread lives as long as the process.
  auto changed = std::make_shared<std::pair<std::mutex, std::condition_variable>>();
  auto pending = std::make_shared<std::atomic<bool>>(false);
  std::thread([client = context.client, changed, pending] {
    (void)FollowEvents(client, true, [&](const SseEvent&) {
      pending->store(true);
      changed->second.notify_one();
      return true;
    });
  }).detach();
  while (true) {
    std::ostringstream frame;
    Context snapshot{context.client, frame, context.err};
    render(snapshot);
    std::string text = frame.str();
    if (terminal) {
      context.out << "\033[H\033[2J" << text;
    } else if (json_output) {
      json parsed = json::parse(text, nullptr, false);
      context.out << (parsed.is_discarded() ? text : parsed.dump() + "\n");
    } else {
      context.out << text << "\n";
    }
    context.out.flush();
    std::unique_lock lock(changed->first);
    changed->second.wait_for(lock, interval, [&] { return pending->load(); });
    lock.unlock();
    // A burst of events (a migration sends several) is one redraw.
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    pending->store(false);
  }
}

}  // namespace tern::cli
