#include "tern/agent/load_json.hpp"

#include "tern/agent/node_identity.hpp"

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
    load.seq = in.at("seq").get<std::uint64_t>();
    load.sampled_at_ms = in.value("sampled_at_ms", std::int64_t{0});
    load.load1 = in.value("load1", 0.0);
    load.runnable = in.value("runnable", 0);
    load.cpus = in.value("cpus", 0);
    load.cpu_mhz = in.value("cpu_mhz", 0.0);
    load.mem_total_bytes = in.value("mem_total_bytes", std::uint64_t{0});
    load.mem_free_bytes = in.value("mem_free_bytes", std::uint64_t{0});
    load.jobs_running = in.value("jobs_running", 0);
    for (const auto& job : in.value("jobs", json::array())) {
      balancer::JobLoad entry;
      entry.job_id = job.value("job_id", "");
      entry.cpu_share = job.value("cpu_share", 0.0);
      entry.rss_bytes = job.value("rss_bytes", std::uint64_t{0});
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
    load.mem_limit_bytes = in.value("mem_limit_bytes", std::uint64_t{0});
    load.mem_used_bytes = in.value("mem_used_bytes", std::uint64_t{0});
    load.link_bytes_per_s = in.value("link_bytes_per_s", 0.0);
    load.draining = in.value("draining", false);
    return load;
  } catch (const std::exception& error) {
    return Fail(std::string("malformed load vector: ") + error.what());
  }
}

Expected<balancer::MemberInfo> MemberFromJson(const json& in) {
  try {
    balancer::MemberInfo member;
    member.node_id = std::stoull(in.at("node_id").get<std::string>(), nullptr, 16);
    member.name = in.at("name").get<std::string>();
    member.address = in.value("address", "");
    member.api_address = in.value("api_address", "");
    return member;
  } catch (const std::exception& error) {
    return Fail(std::string("malformed member: ") + error.what());
  }
}

}  // namespace tern::agent
