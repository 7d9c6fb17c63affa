#include "tern/agent/agent_api.hpp"

#include <fcntl.h>
#include <pwd.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <tern/jobs/job_file.hpp>
#include <tern/jobs/job_supervisor.hpp>
#include <tern/json_integer.hpp>
#include <tern/json_text.hpp>
#include <tuple>

#include "balancer_service.hpp"
#include "fault_hook.hpp"
#include "tern/agent/cluster.hpp"
#include "tern/agent/event_bus.hpp"
#include "tern/agent/load_json.hpp"
#include "tern/agent/migration_driver.hpp"
#include "tern/agent/migration_history.hpp"
#include "tern/agent/node_identity.hpp"
#include "tern/agent/target.hpp"

namespace tern::agent {
namespace {

using nlohmann::json;
constexpr std::uint64_t kDefaultLogLimit = 1 << 20;
constexpr std::uint64_t kMaxLogLimit = 8 << 20;

json NodeToJson(const NodeView& node) {
  json out = {{"name", node.name},
              {"id", NodeIdHex(node.id)},
              {"address", node.address},
              {"api_address", node.api_address},
              {"state", node.state},
              {"self", node.self},
              {"last_seen_ms", node.last_seen_ms},
              {"load", 0.0},
              {"cpus", 0},
              {"mem_total_bytes", 0},
              {"mem_free_bytes", 0},
              {"jobs", 0},
              {"draining", false},
              {"capacity", 0.0},
              {"speed", 1.0},
              {"demand", 0.0},
              {"mem_limit_bytes", 0},
              {"mem_used_bytes", 0},
              {"link_bytes_per_s", 0.0},
              {"job_loads", json::array()}};
  if (node.load) {
    out["capacity"] = node.load->capacity;
    out["speed"] = node.load->speed;
    out["demand"] = node.load->demand;
    out["mem_limit_bytes"] = node.load->mem_limit_bytes;
    out["mem_used_bytes"] = node.load->mem_used_bytes;
    out["link_bytes_per_s"] = node.load->link_bytes_per_s;
    out["job_loads"] = LoadToJson(*node.load)["jobs"];
    out["load"] = node.load->load1;
    out["cpus"] = node.load->cpus;
    out["mem_total_bytes"] = node.load->mem_total_bytes;
    out["mem_free_bytes"] = node.load->mem_free_bytes;
    out["jobs"] = node.load->jobs_running;
    out["age_ms"] = node.age_ms;
    out["draining"] = node.load->draining;
  }
  out["linked"] = node.linked;
  return out;
}

json TrafficToJson(const ClusterTraffic& traffic) {
  return {{"gossip_bytes_sent", traffic.gossip_bytes_sent},
          {"gossip_frames_sent", traffic.gossip_frames_sent},
          {"gossip_bytes_received", traffic.gossip_bytes_received},
          {"bytes_sent", traffic.bytes_sent},
          {"links_open", traffic.links_open},
          {"links_open_max", traffic.links_open_max},
          {"links_opened", traffic.links_opened},
          {"links_closed_idle", traffic.links_closed_idle},
          {"uptime_ms", traffic.uptime_ms}};
}

bool MaySee(const ApiCaller& caller, const jobs::JobRecord& record) {
  const auto viewer = JobViewerOf(caller);
  return !viewer || *viewer == record.uid;
}

// Whose a job listed as JSON (jobs::ToJson) is, for MaySee.
jobs::JobRecord OwnerOf(const json& listed) {
  jobs::JobRecord owner;
  // Only a uid that fits: get<uid_t>() would wrap 4294968296 to 1000, another user's.
  owner.uid = JsonIntegerOr<uid_t>(listed, "uid", static_cast<uid_t>(-1));
  owner.user = listed.value("user", "");
  return owner;
}

// This agent's jobs as `caller` may see them. With `stubs`, other users' jobs are listed as
// {"id","node","hidden":true} so that a call naming one can be routed to its node and refused
// there with a clear 403 rather than a puzzling 404.
json LocalJobsJson(const jobs::JobSupervisor& supervisor, const ApiCaller& caller, bool stubs) {
  json list = json::array();
  const auto now = std::chrono::system_clock::now();
  for (const auto& record : supervisor.List()) {
    if (MaySee(caller, record)) {
      list.push_back(jobs::ToJson(record, now));
    } else if (stubs) {
      list.push_back({{"id", record.id}, {"node", record.node}, {"hidden", true}});
    }
  }
  return list;
}

bool IsFinal(const std::string& state) { return state != "running"; }

// The job id a user typed, and every job the cluster knows: the match or a clear refusal.
Expected<json> MatchJob(const std::string& wanted, const json& jobs) {
  std::vector<const json*> prefix_matches;
  for (const auto& job : jobs) {
    const std::string id = job.value("id", "");
    if (id == wanted) return job;
    if (id.rfind(wanted, 0) == 0) prefix_matches.push_back(&job);
  }
  if (prefix_matches.empty()) return Fail("no job '" + wanted + "'");
  if (prefix_matches.size() > 1) {
    std::string names;
    for (size_t i = 0; i < prefix_matches.size() && i < 5; ++i) {
      names += (i ? ", " : "") + prefix_matches[i]->value("id", "");
    }
    if (prefix_matches.size() > 5) names += ", ...";
    return Fail("job id '" + wanted + "' is ambiguous: it matches " + names);
  }
  return *prefix_matches.front();
}

bool MayWrite(const ApiCall& call, ApiDone& done) {
  if (call.caller.identified) return true;
  done(ErrorResult(403, "read-only access: use an admin token or the agent's Unix socket"));
  return false;
}

// The objects of each peer's `key` array (a listing asked with ?local=1), in the order the
// peers answered; a peer that did not answer 200 with such an array is named in `unreachable`.
std::vector<json> PeerListings(std::vector<std::pair<std::string, ApiResult>>& answers,
                               const char* key, json& unreachable) {
  std::vector<json> all;
  for (auto& [node, result] : answers) {
    json body = json::parse(result.body, nullptr, false);
    if (result.status != 200 || !body.is_object() || !body.contains(key) || !body[key].is_array()) {
      unreachable.push_back(node);
      continue;
    }
    for (auto& item : body[key]) {
      if (item.is_object()) all.push_back(std::move(item));
    }
  }
  return all;
}

}  // namespace

std::optional<uid_t> JobViewerOf(const ApiCaller& caller) {
  // Unidentified callers hold a read-only token (the TCP API refuses anyone without one).
  if (!caller.identified || caller.uid == 0) return std::nullopt;
  return caller.uid;
}

AgentApi::AgentApi(jobs::JobSupervisor& supervisor, Cluster& cluster, MigrationDriver& migrations,
                   std::string version)
    : supervisor_(supervisor),
      cluster_(cluster),
      migrations_(migrations),
      version_(std::move(version)) {}

void AgentApi::Handle(ApiCall call, ApiDone done) {
  const Target target = ParseTarget(call.target);
  const auto& parts = target.segments;
  const std::string& method = call.method;
  auto wrong_method = [&](const char* allowed) {
    done(ErrorResult(405, method + " is not allowed on " + target.path + " (use " + allowed + ")"));
  };
  try {
    if (!target.valid()) {
      done(ErrorResult(400, target.error));
    } else if (parts.size() < 2 || parts[0] != "v1") {
      done(ErrorResult(404, "no such API path: " + target.path));
    } else if (parts.size() == 2 && parts[1] == "faults") {
      Faults(call, done);
    } else if (parts.size() == 2 && parts[1] == "info") {
      method == "GET" ? Info(call, done) : wrong_method("GET");
    } else if (parts.size() == 2 && parts[1] == "nodes") {
      method == "GET" ? ListNodes(call, done) : wrong_method("GET");
    } else if (parts.size() == 2 && parts[1] == "jobs") {
      if (method == "GET") {
        ListJobs(call, done);
      } else if (method == "POST") {
        SubmitJob(call, done);
      } else {
        wrong_method("GET, POST");
      }
    } else if (parts.size() == 3 && parts[1] == "jobs") {
      method == "GET" ? JobCall(std::move(call), parts[2], "", done) : wrong_method("GET");
    } else if (parts.size() == 4 && parts[1] == "jobs" && parts[3] == "cancel") {
      method == "POST" ? JobCall(std::move(call), parts[2], "cancel", done) : wrong_method("POST");
    } else if (parts.size() == 4 && parts[1] == "jobs" && parts[3] == "migrate") {
      method == "POST" ? JobCall(std::move(call), parts[2], "migrate", done) : wrong_method("POST");
    } else if (parts.size() == 4 && parts[1] == "jobs" && parts[3] == "recover") {
      method == "POST" ? JobCall(std::move(call), parts[2], "recover", done) : wrong_method("POST");
    } else if (parts.size() == 4 && parts[1] == "jobs" &&
               (parts[3] == "pin" || parts[3] == "unpin")) {
      method == "POST" ? JobCall(std::move(call), parts[2], parts[3], done) : wrong_method("POST");
    } else if (parts.size() == 4 && parts[1] == "nodes" &&
               (parts[3] == "drain" || parts[3] == "undrain")) {
      method == "POST" ? NodeCall(call, parts[2], parts[3], done) : wrong_method("POST");
    } else if (parts.size() == 3 && parts[1] == "events" && parts[2] == "recent") {
      method == "GET" ? RecentEvents(call, done) : wrong_method("GET");
    } else if (parts.size() == 2 && parts[1] == "migrations") {
      method == "GET" ? ListMigrations(call, done) : wrong_method("GET");
    } else if (parts.size() >= 3 && parts[1] == "migrations") {
      migrations_.Handle(call, parts, done);
    } else if (parts.size() == 4 && parts[1] == "jobs" && parts[3] == "logs") {
      method == "GET" ? JobCall(std::move(call), parts[2], "logs", done) : wrong_method("GET");
    } else {
      done(ErrorResult(404, "no such API path: " + target.path));
    }
  } catch (const std::exception& error) {
    spdlog::error("api: {} {} from {} failed: {}", method, call.target, call.caller.via,
                  error.what());
    done(ErrorResult(500, std::string("internal error: ") + error.what()));
  }
}

void AgentApi::Faults(const ApiCall& call, ApiDone done) {
  if (call.method != "GET" && !MayWrite(call, done)) return;
  if (call.caller.uid != 0 || call.forwarded) {
    done(ErrorResult(403, "only root on this node may read or arm its faults"));
    return;
  }
  if (faults_ == nullptr || !faults_->enabled()) {
    done(ErrorResult(403,
                     "fault injection is off on this node ([testing] faults = true in "
                     "its config turns it on, for bench/faults only)"));
    return;
  }
  if (call.method == "POST") {
    const json body = json::parse(call.body, nullptr, false);
    auto plans = FaultPlan::ListFromJson(body);
    if (!plans) {
      done(ErrorResult(400, plans.error().message));
      return;
    }
    if (auto armed = faults_->Arm(std::move(*plans)); !armed) {
      done(ErrorResult(403, armed.error().message));
      return;
    }
    spdlog::warn("fault armed: {}", faults_->StatusJson()["armed"].dump());
  } else if (call.method == "DELETE") {
    faults_->Disarm();
  } else if (call.method != "GET") {
    done(ErrorResult(405, call.method + " is not allowed on /v1/faults (use GET, POST, DELETE)"));
    return;
  }
  done(JsonResult(200, faults_->StatusJson().dump()));
}

void AgentApi::Info(const ApiCall&, ApiDone done) {
  json info = {{"node", cluster_.self().name},
               {"node_id", NodeIdHex(cluster_.self().id)},
               {"version", version_},
               {"jobs_running", supervisor_.RunningCount()},
               {"measurement", measurement_}};
  done(JsonResult(200, info.dump()));
}

void AgentApi::ListNodes(const ApiCall&, ApiDone done) {
  json nodes = json::array();
  for (const auto& node : cluster_.Nodes()) {
    json row = NodeToJson(node);
    // Our own flag is newer than the load vector of the last heartbeat.
    if (node.self && balancer_) row["draining"] = balancer_->draining();
    // What gossip and links cost this agent: the figures issue 13 asks to stay flat.
    if (node.self) row["traffic"] = TrafficToJson(cluster_.Traffic());
    nodes.push_back(std::move(row));
  }
  done(JsonResult(200, json{{"nodes", nodes}}.dump()));
}

void AgentApi::NodeCall(const ApiCall& call, const std::string& name, const std::string& action,
                        ApiDone done) {
  if (!MayWrite(call, done)) return;
  if (call.caller.uid != 0) {
    done(ErrorResult(403, "only root may " + action + " a node"));
    return;
  }
  if (name != cluster_.self().name) {
    if (call.forwarded) {
      done(ErrorResult(400, "this agent is " + cluster_.self().name + ", not " + name));
      return;
    }
    auto node_id = cluster_.AliveNodeByName(name);
    if (!node_id) {
      done(ErrorResult(404, "node '" + name + "' is not an alive member of the cluster " +
                                "(see `tern nodes`)"));
      return;
    }
    cluster_.Call(*node_id, call, done);
    return;
  }
  if (balancer_ == nullptr) {
    done(ErrorResult(503, "this agent has no balancer"));
    return;
  }
  if (auto set = balancer_->SetDraining(action == "drain"); !set) {
    done(ErrorResult(500, set.error().message));
    return;
  }
  done(JsonResult(
      200,
      json{{"node", name}, {"draining", balancer_->draining()}, {"balancer", balancer_->enabled()}}
          .dump()));
}

void AgentApi::RecentEvents(const ApiCall& call, ApiDone done) {
  const Target target = ParseTarget(call.target);
  std::uint64_t since = 0;
  std::size_t limit = EventBus::kRecent;
  try {
    since = std::stoull(target.Get("since", "0"));
    limit = std::min<std::size_t>(std::stoull(target.Get("limit", "1000")), EventBus::kRecent);
  } catch (const std::exception&) {
    done(ErrorResult(400, "since and limit must be whole numbers"));
    return;
  }
  const std::string type = target.Get("type", "");
  json local = json::array();
  if (events_ != nullptr) {
    for (auto& event : events_->Recent(since, type, limit, JobViewerOf(call.caller))) {
      local.push_back(std::move(event));
    }
  }
  if (call.forwarded || target.query.count("local") != 0) {
    const std::uint64_t last = events_ != nullptr ? events_->last_seq() : 0;
    done(JsonResult(200, json{{"events", local}, {"last_seq", last}}.dump()));
    return;
  }
  ApiCall peer_call;
  peer_call.method = "GET";
  peer_call.target = "/v1/events/recent?local=1&limit=" + std::to_string(limit) +
                     (type.empty() ? "" : "&type=" + type);
  peer_call.caller = call.caller;
  cluster_.CallAllPeers(peer_call, [local = std::move(local), limit, done](auto answers) mutable {
    std::vector<json> all(local.begin(), local.end());
    json unreachable = json::array();
    for (auto& event : PeerListings(answers, "events", unreachable))
      all.push_back(std::move(event));
    // Times are RFC 3339 UTC with milliseconds: text order is time order. A peer's event is
    // hostile input: a field of the wrong type sorts as empty (value() would throw inside the
    // sort, and cast a float seq such as 1e300 to an integer, undefined behaviour).
    auto key = [](const json& event) {
      return std::make_tuple(JsonText(event, "time"), JsonText(event, "node"),
                             JsonIntegerOr<std::uint64_t>(event, "seq", 0));
    };
    std::stable_sort(all.begin(), all.end(),
                     [&](const json& a, const json& b) { return key(a) < key(b); });
    if (all.size() > limit) all.erase(all.begin(), all.end() - static_cast<long>(limit));
    done(JsonResult(200, json{{"events", all}, {"unreachable", unreachable}}.dump()));
  });
}

void AgentApi::ListMigrations(const ApiCall& call, ApiDone done) {
  const Target target = ParseTarget(call.target);
  std::size_t limit = 100;
  try {
    limit = std::min<std::size_t>(std::stoull(target.Get("limit", "100")), MigrationHistory::kKeep);
  } catch (const std::exception&) {
    done(ErrorResult(400, "limit must be a whole number"));
    return;
  }
  json local = history_ != nullptr ? history_->Recent(limit) : json::array();
  if (call.forwarded || target.query.count("local") != 0) {
    done(JsonResult(200, json{{"migrations", local}}.dump()));
    return;
  }
  ApiCall peer_call;
  peer_call.method = "GET";
  peer_call.target = "/v1/migrations?local=1&limit=" + std::to_string(limit);
  peer_call.caller = call.caller;
  cluster_.CallAllPeers(peer_call, [local = std::move(local), limit, done](auto answers) mutable {
    std::vector<json> all(local.begin(), local.end());
    json unreachable = json::array();
    for (auto& migration : PeerListings(answers, "migrations", unreachable)) {
      all.push_back(std::move(migration));
    }
    // RFC 3339 UTC times sort as text; a record without a start (null) goes last.
    std::stable_sort(all.begin(), all.end(), [](const json& a, const json& b) {
      return JsonText(a, "started_at") > JsonText(b, "started_at");
    });
    if (all.size() > limit) all.resize(limit);
    done(JsonResult(200, json{{"migrations", all}, {"unreachable", unreachable}}.dump()));
  });
}

void AgentApi::ListJobs(const ApiCall& call, ApiDone done) {
  const Target target = ParseTarget(call.target);
  const bool stubs = target.query.count("resolve") != 0;
  json local = LocalJobsJson(supervisor_, call.caller, stubs);
  // A blocked copy that is not a job here yet (its source silent): listed, so that `tern
  // status` and `tern recover` find the node that holds it.
  for (auto& copy : migrations_.BlockedCopies()) {
    if (MaySee(call.caller, OwnerOf(copy))) {
      local.push_back(std::move(copy));
    } else if (stubs) {
      local.push_back(
          {{"id", copy.value("id", "")}, {"node", copy.value("node", "")}, {"hidden", true}});
    }
  }
  if (call.forwarded || target.query.count("local") != 0) {
    done(JsonResult(200, json{{"jobs", local}}.dump()));
    return;
  }
  ApiCall peer_call;
  peer_call.method = "GET";
  peer_call.target = stubs ? "/v1/jobs?local=1&resolve=1" : "/v1/jobs?local=1";
  peer_call.caller = call.caller;
  cluster_.CallAllPeers(peer_call, [local = std::move(local), done](auto answers) mutable {
    std::map<std::string, json> by_id;
    for (auto& job : local) by_id[job.value("id", "")] = job;
    json unreachable = json::array();
    for (auto& job : PeerListings(answers, "jobs", unreachable)) {
      const std::string id = job.value("id", "");
      // While a job moves both sides may list it; the running copy is the true one.
      auto existing = by_id.find(id);
      if (existing == by_id.end() || job.value("state", "") == "running") by_id[id] = job;
    }
    json jobs = json::array();
    for (auto& [id, job] : by_id) jobs.push_back(std::move(job));
    done(JsonResult(200, json{{"jobs", jobs}, {"unreachable", unreachable}}.dump()));
  });
}

void AgentApi::SubmitJob(const ApiCall& call, ApiDone done) {
  if (!MayWrite(call, done)) return;
  json body = json::parse(call.body, nullptr, false);
  if (!body.is_object()) {
    done(ErrorResult(400, "the request body must be a JSON object"));
    return;
  }
  const json argv = body.value("argv", json::array());
  if (!argv.is_array() || argv.empty() ||
      !std::all_of(argv.begin(), argv.end(), [](const json& a) { return a.is_string(); })) {
    done(ErrorResult(400, "argv must be a non-empty array of strings (the command to run)"));
    return;
  }
  if (body.contains("pin") && !body["pin"].is_boolean()) {
    done(ErrorResult(400, "pin must be true or false"));
    return;
  }
  if (body.contains("net") && !body["net"].is_boolean()) {
    done(ErrorResult(400, "net must be true or false"));
    return;
  }
  const std::string node = body.value("node", "");
  // Without --node the balancer places the job (docs/balancer.md); a forwarded job was placed.
  if (node.empty() && !call.forwarded && balancer_ != nullptr &&
      (balancer_->enabled() || balancer_->draining())) {
    const balancer::Placement placement = balancer_->Place();
    if (placement.node == 0 && balancer_->draining()) {
      done(ErrorResult(503, "node " + cluster_.self().name +
                                " is draining and no other node takes new jobs now; "
                                "name one with --node"));
      return;
    }
    if (placement.node != 0) {
      SubmitTo(
          call, std::move(body), placement.name,
          [this, placement](const std::string& job) { balancer_->Placed(job, placement); }, done);
      return;
    }
  }
  SubmitTo(call, std::move(body), node, nullptr, done);
}

void AgentApi::SubmitTo(const ApiCall& call, json body, const std::string& node,
                        std::function<void(const std::string& job)> placed, ApiDone done) {
  const json argv = body.value("argv", json::array());
  if (!node.empty() && node != cluster_.self().name) {
    if (call.forwarded) {
      done(ErrorResult(400, "this agent is " + cluster_.self().name + ", not " + node));
      return;
    }
    auto node_id = cluster_.AliveNodeByName(node);
    if (!node_id) {
      done(ErrorResult(404, "node '" + node + "' is not an alive member of the cluster " +
                                "(see `tern nodes`)"));
      return;
    }
    // This node is the job's home: it names the job, wherever the job runs.
    auto id = supervisor_.AllocateJobId();
    if (!id) {
      done(ErrorResult(500, id.error().message));
      return;
    }
    ApiCall remote = call;
    body["id"] = *id;
    body["home_node"] = cluster_.self().name;
    if (body.value("net", false)) {
      // The home node's share of the pool names the address, wherever the job runs.
      auto address = supervisor_.JobNetAddress(*id);
      if (!address || !supervisor_.net().enabled()) {
        done(ErrorResult(409, "node " + cluster_.self().name +
                                  " has no job network for --net ([net] in its config)"));
        return;
      }
      body["address"] = *address;
    }
    remote.body = body.dump();
    cluster_.Call(*node_id, remote, [this, placed, id = *id, done](ApiResult result) {
      if (result.status / 100 == 2) {
        // The placement event names the job: it is its user's to see.
        const json job = json::parse(result.body, nullptr, false);
        if (events_ != nullptr && job.is_object() && job.contains("uid") &&
            job["uid"].is_number_integer() && job["uid"].get<std::int64_t>() >= 0) {
          events_->NoteOwner(id, static_cast<uid_t>(job["uid"].get<std::int64_t>()));
        }
        if (placed) placed(id);
      }
      done(std::move(result));
    });
    return;
  }

  jobs::SubmitRequest request;
  if (call.forwarded) {  // only a home node may name a job
    request.id = body.value("id", "");
    request.home_node = body.value("home_node", "");
    if (body.contains("address") && body["address"].is_string()) {
      request.address = body["address"].get<std::string>();
    }
  }
  request.net = body.value("net", false);
  request.argv = argv.get<std::vector<std::string>>();
  request.name = body.value("name", "");
  request.pinned = body.value("pin", false);
  if (body.contains("env")) {
    if (!body["env"].is_object()) {
      done(ErrorResult(400, "env must be an object of strings"));
      return;
    }
    for (const auto& [key, value] : body["env"].items()) {
      if (!value.is_string()) {
        done(ErrorResult(400, "env value of " + key + " must be a string"));
        return;
      }
      request.env[key] = value.get<std::string>();
    }
  }
  const std::string user = body.value("user", "");
  passwd entry{};
  passwd* found = nullptr;
  std::string buffer(16384, '\0');
  if (!user.empty()) {
    if (call.caller.uid != 0) {
      done(ErrorResult(403, "only root may run a job as another user (--user)"));
      return;
    }
    getpwnam_r(user.c_str(), &entry, buffer.data(), buffer.size(), &found);
    if (found == nullptr) {
      done(ErrorResult(400, "no user '" + user + "' on node " + cluster_.self().name));
      return;
    }
    request.uid = found->pw_uid;
    request.gid = found->pw_gid;
    request.user = found->pw_name;
  } else {
    request.uid = call.caller.uid;
    request.gid = call.caller.gid;
    getpwuid_r(request.uid, &entry, buffer.data(), buffer.size(), &found);
    request.user = found != nullptr ? found->pw_name : std::to_string(request.uid);
  }
  auto record = supervisor_.Submit(request);
  if (!record) {
    done(ErrorResult(500, record.error().message));
    return;
  }
  if (events_ != nullptr) events_->NoteOwner(record->id, record->uid);
  if (placed) placed(record->id);
  done(JsonResult(201, jobs::ToJson(*record, std::chrono::system_clock::now()).dump()));
}

void AgentApi::JobCall(ApiCall call, const std::string& id, const std::string& action,
                       ApiDone done) {
  if (supervisor_.Get(id) || migrations_.BlockedMove(id) || call.forwarded) {
    LocalJobCall(call, id, action, done);
    return;
  }
  ApiCall list_call;
  list_call.method = "GET";
  list_call.target = "/v1/jobs?resolve=1";
  list_call.caller = call.caller;
  ListJobs(list_call, [this, call = std::move(call), id, action, done](ApiResult listing) {
    json body = json::parse(listing.body, nullptr, false);
    if (listing.status != 200 || !body.is_object()) {
      done(listing);
      return;
    }
    auto match = MatchJob(id, body["jobs"]);
    if (!match) {
      std::string message = match.error().message;
      if (!body["unreachable"].empty()) {
        message += " (not reachable now: " + body["unreachable"].dump() + ")";
      }
      const bool ambiguous = message.find("ambiguous") != std::string::npos;
      done(ErrorResult(ambiguous ? 409 : 404, message));
      return;
    }
    const std::string full_id = match->value("id", "");
    const std::string node = match->value("node", "");
    if (node == cluster_.self().name) {
      LocalJobCall(call, full_id, action, done);
      return;
    }
    auto node_id = cluster_.AliveNodeByName(node);
    if (!node_id) {
      done(ErrorResult(503, "job " + full_id + " is on node " + node + ", which is unreachable"));
      return;
    }
    ApiCall remote = call;
    Target target = ParseTarget(call.target);
    remote.target = "/v1/jobs/" + full_id + (action.empty() ? "" : "/" + action) +
                    (target.raw_query.empty() ? "" : "?" + target.raw_query);
    cluster_.Call(*node_id, remote, done);
  });
}

void AgentApi::LocalJobCall(const ApiCall& call, const std::string& id, const std::string& action,
                            ApiDone done) {
  auto record = supervisor_.Get(id);
  const auto blocked = migrations_.BlockedMove(id);
  if (action == "recover") {
    // Which copy of a job lives is root's decision alone: it may end or duplicate a job.
    if (!MayWrite(call, done)) return;
    if (!(call.caller.identified && call.caller.uid == 0)) {
      done(ErrorResult(403, "only root may recover a job (tern recover)"));
      return;
    }
    json body = json::parse(call.body.empty() ? "{}" : call.body, nullptr, false);
    const std::string choice =
        body.is_object() && body.contains("choice") && body["choice"].is_string()
            ? body["choice"].get<std::string>()
            : "";
    if (choice != "resume-here" && choice != "discard") {
      done(ErrorResult(400, "choice must be resume-here or discard"));
      return;
    }
    migrations_.Recover(id, choice == "resume-here", done);
    return;
  }
  if (!record && blocked && action.empty()) {
    for (auto& copy : migrations_.BlockedCopies()) {
      if (copy.value("id", "") != id) continue;
      if (!MaySee(call.caller, OwnerOf(copy))) {
        done(ErrorResult(403, "job " + id + " belongs to " + copy.value("user", "") +
                                  "; only its user or root may see it"));
        return;
      }
      done(JsonResult(200, copy.dump()));
      return;
    }
  }
  if (!record) {
    done(ErrorResult(404, "no job '" + id + "' on node " + cluster_.self().name));
    return;
  }
  const auto now = std::chrono::system_clock::now();
  if (action.empty()) {
    if (!MaySee(call.caller, *record)) {
      done(ErrorResult(
          403, "job " + id + " belongs to " + record->user + "; only its user or root may see it"));
      return;
    }
    json status = jobs::ToJson(*record, now);
    if (ipc_rights_ && record->state == jobs::JobState::kRunning) {
      status["ipc_rights"] = ipc_rights_(record->id);
    }
    if (blocked) status["blocked"] = *blocked;
    done(JsonResult(200, status.dump()));
    return;
  }
  const bool owner_or_root =
      call.caller.identified && (call.caller.uid == 0 || call.caller.uid == record->uid);
  if (action == "migrate") {
    if (!MayWrite(call, done)) return;
    if (!owner_or_root) {
      done(ErrorResult(403, "job " + id + " belongs to " + record->user +
                                "; only its user or root may move it"));
      return;
    }
    migrations_.Migrate(call, *record, done);
    return;
  }
  if (action == "pin" || action == "unpin") {
    if (!MayWrite(call, done)) return;
    if (!owner_or_root) {
      done(ErrorResult(403, "job " + id + " belongs to " + record->user +
                                "; only its user or root may " + action + " it"));
      return;
    }
    if (auto to = migrations_.MovingTo(id); !to.empty()) {
      done(ErrorResult(409, "job " + id + " is moving to " + to + "; " + action +
                                " it when the move has ended (tern status " + id + ")"));
      return;
    }
    auto changed = supervisor_.SetPinned(id, action == "pin");
    if (!changed) {
      done(ErrorResult(409, changed.error().message));
      return;
    }
    done(JsonResult(200, jobs::ToJson(*changed, now).dump()));
    return;
  }
  if (action == "cancel") {
    if (!MayWrite(call, done)) return;
    if (!owner_or_root) {
      done(ErrorResult(403, "job " + id + " belongs to " + record->user +
                                "; only its user or root may cancel it"));
      return;
    }
    auto cancelled = supervisor_.Cancel(id);
    if (!cancelled) {
      done(ErrorResult(409, cancelled.error().message));
      return;
    }
    done(JsonResult(200, jobs::ToJson(*cancelled, now).dump()));
    return;
  }
  // logs
  if (!owner_or_root) {
    done(ErrorResult(403, "the logs of job " + id + " are readable by " + record->user +
                              " and root only (use the Unix socket)"));
    return;
  }
  const Target target = ParseTarget(call.target);
  const std::string stream = target.Get("stream", "stdout");
  if (stream != "stdout" && stream != "stderr") {
    done(ErrorResult(400, "stream must be stdout or stderr"));
    return;
  }
  std::uint64_t offset = 0;
  std::uint64_t limit = kDefaultLogLimit;
  try {
    offset = std::stoull(target.Get("offset", "0"));
    limit = std::min<std::uint64_t>(std::stoull(target.Get("limit", "1048576")), kMaxLogLimit);
  } catch (const std::exception&) {
    done(ErrorResult(400, "offset and limit must be whole numbers"));
    return;
  }
  // The state is read before the bytes, so "final state and nothing more" is never premature.
  const std::string state = jobs::ToString(record->state);
  // The job's directory is its user's: the file may be a symlink to anything or a FIFO.
  auto file = jobs::OpenJobFile(record->dir, stream, O_RDONLY);
  if (!file) {
    done(ErrorResult(403,
                     "cannot read the " + stream + " of job " + id + ": " + file.error().message));
    return;
  }
  std::string data;
  if (file->valid()) {
    std::uint64_t size = 0;
    auto read = jobs::ReadRange(file->get(), offset, limit, size);
    if (!read) {
      done(ErrorResult(
          500, "cannot read the " + stream + " of job " + id + ": " + read.error().message));
      return;
    }
    data = std::move(*read);
  }
  ApiResult result;
  result.status = 200;
  result.content_type = "application/octet-stream";
  result.headers.emplace_back("X-Tern-Next-Offset", std::to_string(offset + data.size()));
  result.headers.emplace_back("X-Tern-Job-State", state);
  result.body = std::move(data);
  (void)IsFinal;
  done(std::move(result));
}

}  // namespace tern::agent
