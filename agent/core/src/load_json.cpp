#include "tern/agent/load_json.hpp"

#include "tern/agent/node_identity.hpp"
#include "tern/json_integer.hpp"

namespace tern::agent {

using nlohmann::json;

json LoadToJson(const balancer::LoadVector& load) {
  json jobs = json::array();
  for (const auto& job : load.jobs) {
    json peers = json::array();
    for (const auto& [peer, rate] : job.peers)
      peers.push_back({{"job_id", peer}, {"bytes_per_s", rate}});
    jobs.push_back({{"job_id", job.job_id},
                    {"cpu_share", job.cpu_share},
                    {"rss_bytes", job.rss_bytes},
                    {"io_bytes_per_s", job.io_bytes_per_s},
                    {"runnable", job.runnable},
                    {"age_s", job.age_s},
                    {"pinned", job.pinned},
                    {"peers", peers}});
  }
  return json{{"node_id", NodeIdHex(load.node_id)},
              {"node_name", load.node_name},
              {"address", load.address},
              {"api_address", load.api_address},
              {"seq", load.seq},
              {"sampled_at_ms", load.sampled_at_ms},
              {"load1", load.load1},
              {"runnable", load.runnable},
              {"cpus", load.cpus},
              {"cpu_mhz", load.cpu_mhz},
              {"mem_total_bytes", load.mem_total_bytes},
              {"mem_free_bytes", load.mem_free_bytes},
              {"jobs_running", load.jobs_running},
              {"jobs", jobs},
              {"capacity", load.capacity},
              {"speed", load.speed},
              {"demand", load.demand},
              {"mem_limit_bytes", load.mem_limit_bytes},
              {"mem_used_bytes", load.mem_used_bytes},
              {"link_bytes_per_s", load.link_bytes_per_s},
              {"draining", load.draining}};
}

Expected<balancer::LoadVector> LoadFromJson(const json& in) {
  try {
    balancer::LoadVector load;
    load.node_id = std::stoull(in.at("node_id").get<std::string>(), nullptr, 16);
    load.node_name = in.at("node_name").get<std::string>();
    load.address = in.value("address", "");
    load.api_address = in.value("api_address", "");
    // Integers through JsonIntegerAt: a peer's float out of range (seq 1e300) would be undefined
    // behaviour in nlohmann's get<integer>(), and 0.9 would silently become 0.
    load.seq = JsonIntegerAt<std::uint64_t>(in, "seq");
    load.sampled_at_ms = JsonIntegerAt<std::int64_t>(in, "sampled_at_ms", 0);
    load.load1 = in.value("load1", 0.0);
    load.runnable = JsonIntegerAt<int>(in, "runnable", 0);
    load.cpus = JsonIntegerAt<int>(in, "cpus", 0);
    load.cpu_mhz = in.value("cpu_mhz", 0.0);
    load.mem_total_bytes = JsonIntegerAt<std::uint64_t>(in, "mem_total_bytes", 0);
    load.mem_free_bytes = JsonIntegerAt<std::uint64_t>(in, "mem_free_bytes", 0);
    load.jobs_running = JsonIntegerAt<int>(in, "jobs_running", 0);
    for (const auto& job : in.value("jobs", json::array())) {
      balancer::JobLoad entry;
      entry.job_id = job.value("job_id", "");
      entry.cpu_share = job.value("cpu_share", 0.0);
      entry.rss_bytes = JsonIntegerAt<std::uint64_t>(job, "rss_bytes", 0);
      entry.io_bytes_per_s = job.value("io_bytes_per_s", 0.0);
      entry.runnable = job.value("runnable", 0.0);
      entry.age_s = job.value("age_s", 0.0);
      entry.pinned = job.value("pinned", false);
      for (const auto& peer : job.value("peers", json::array())) {
        entry.peers.emplace_back(peer.value("job_id", ""), peer.value("bytes_per_s", 0.0));
      }
      load.jobs.push_back(std::move(entry));
    }
    load.capacity = in.value("capacity", 0.0);
    load.speed = in.value("speed", 1.0);
    load.demand = in.value("demand", 0.0);
    load.mem_limit_bytes = JsonIntegerAt<std::uint64_t>(in, "mem_limit_bytes", 0);
    load.mem_used_bytes = JsonIntegerAt<std::uint64_t>(in, "mem_used_bytes", 0);
    load.link_bytes_per_s = in.value("link_bytes_per_s", 0.0);
    load.draining = in.value("draining", false);
    return load;
  } catch (const std::exception& error) {
    return Fail(std::string("malformed load vector: ") + error.what());
  }
}

std::string GossipToJson(const std::vector<balancer::GossipEntry>& entries) {
  json out = json::array();
  for (const auto& entry : entries) {
    out.push_back(
        {{"load", LoadToJson(entry.load)}, {"age_ms", entry.age.count()}, {"dead", entry.dead}});
  }
  return json{{"entries", out}}.dump();
}

Expected<ParsedGossip> GossipFromJson(std::string_view payload) {
  if (payload.size() > kMaxGossipBytes) {
    return Fail("gossip of " + std::to_string(payload.size()) + " bytes: over the limit of " +
                std::to_string(kMaxGossipBytes));
  }
  const json body = json::parse(payload, nullptr, false);
  if (!body.is_object()) return Fail("gossip is not a JSON object");
  const auto entries = body.find("entries");
  if (entries == body.end() || !entries->is_array()) return Fail("gossip without \"entries\"");
  if (entries->size() > balancer::Gossip::kMaxEntries) {
    return Fail("gossip of " + std::to_string(entries->size()) + " entries: over the limit of " +
                std::to_string(balancer::Gossip::kMaxEntries));
  }
  ParsedGossip parsed;
  for (const auto& entry : *entries) {
    if (!entry.is_object() || !entry.contains("load")) {
      parsed.rejected.push_back("gossip entry is not an object with a load");
      continue;
    }
    auto load = LoadFromJson(entry["load"]);
    if (!load) {
      parsed.rejected.push_back(load.error().message);
      continue;
    }
    balancer::GossipEntry out;
    out.load = std::move(*load);
    const auto age = entry.find("age_ms");
    const auto dead = entry.find("dead");
    const auto age_ms = age == entry.end() ? std::nullopt : JsonInteger<std::int64_t>(*age);
    if (!age_ms || *age_ms < 0 || (dead != entry.end() && !dead->is_boolean())) {
      parsed.rejected.push_back("gossip entry about " + out.load.node_name +
                                ": bad age_ms or dead");
      continue;
    }
    out.age = std::chrono::milliseconds(*age_ms);
    out.dead = dead != entry.end() && dead->get<bool>();
    parsed.entries.push_back(std::move(out));
  }
  return parsed;
}

}  // namespace tern::agent
