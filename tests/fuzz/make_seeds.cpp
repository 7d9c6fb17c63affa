// tern-fuzz-seeds OUTDIR: writes the seed corpus of every fuzz target below OUTDIR/<target>/,
// built with the codecs' own encoders (and, for IPC, by playing requests against the
// job_request target's routers and reading the names out of their replies), so the seeds
// follow the wire formats when they change. deploy/fuzz --seeds runs it into
// tests/fuzz/corpus; what it wrote is committed.
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <tern/agent/api_call.hpp>
#include <tern/ipc/blast_outbox.hpp>
#include <tern/ipc/direct_wire.hpp>
#include <tern/ipc/frame.hpp>
#include <tern/ipc/job_wire.hpp>
#include <tern/ipc/state_journal.hpp>
#include <tern/jobs/job_record.hpp>
#include <tern/migrate/archive.hpp>
#include <vector>

#include "fuzz_records.hpp"
#include "job_request_sim.hpp"

namespace {

namespace fs = std::filesystem;
using tern::fuzz::JobRequestSim;
using tern::ipc::JobOp;
using tern::ipc::WireWriter;

fs::path out_dir;

void Write(const std::string& target, const std::string& name, const std::string& bytes) {
  fs::create_directories(out_dir / target);
  std::ofstream(out_dir / target / name, std::ios::binary) << bytes;
}

std::string Record(std::uint8_t tag, const std::string& bytes) {
  std::string out;
  out.push_back(static_cast<char>(tag));
  out.push_back(static_cast<char>(bytes.size() >> 8));
  out.push_back(static_cast<char>(bytes.size()));
  return out + bytes;
}

// Plays records against a JobRequestSim while writing them down, so later requests can use
// the names earlier replies gave.
class Script {
 public:
  // Sends `body` as `op` from job `job` on node `node`; returns the reply body (after the
  // 6-byte header) of the reply it got at once, or "".
  std::string Ask(int node, int job, JobOp op, const std::string& body) {
    const std::string payload = tern::ipc::EncodeJobRequest(++id_, op, body);
    auto& replies = sim_.replies()[JobRequestSim::kJobs[job]];
    const std::size_t before = replies.size();
    Play(JobRequestSim::Tag(JobRequestSim::kRequest, node, job), payload);
    if (replies.size() == before) return "";
    return replies.back().substr(tern::ipc::kJobReplyHeaderSize);
  }
  std::uint32_t AskName(int node, int job, JobOp op, const std::string& body) {
    const std::string reply = Ask(node, job, op, body);
    tern::ipc::WireReader reader(reply);  // a view: `reply` outlives it
    return reader.U32().value_or(0);
  }
  void Event(JobRequestSim::Event event, int node = 0, int job = 0, const std::string& bytes = "") {
    Play(JobRequestSim::Tag(event, node, job), bytes);
  }
  const std::string& bytes() const { return bytes_; }
  const JobRequestSim& sim() const { return sim_; }

 private:
  void Play(std::uint8_t tag, const std::string& bytes) {
    const std::string record = Record(tag, bytes);
    bytes_ += record;
    tern::fuzz::Records records(reinterpret_cast<const std::uint8_t*>(record.data()),
                                record.size());
    sim_.Play(*records.Next());
  }
  JobRequestSim sim_;
  std::string bytes_;
  std::uint32_t id_ = 0;
};

std::string U32s(std::initializer_list<std::uint32_t> values) {
  WireWriter writer;
  for (auto v : values) writer.U32(v);
  return writer.Take();
}

tern::ipc::Message DataMessage(std::uint32_t to, std::string data) {
  tern::ipc::Message message;
  message.destination = to;
  message.destination_disposition = tern::ipc::Disposition::kCopySend;
  message.id = 7;
  message.items.push_back(tern::ipc::Item::Bytes(std::move(data)));
  return message;
}

std::string SendBody(std::uint32_t to, std::string data,
                     tern::ipc::FullPolicy policy = tern::ipc::FullPolicy::kFail,
                     std::uint32_t timeout = 0) {
  tern::ipc::SendRequest request;
  request.message = DataMessage(to, std::move(data));
  request.policy = policy;
  request.timeout_ms = timeout;
  return tern::ipc::EncodeSendRequest(request);
}

// The journal node 1's router writes while it plays a job_request script, as the ipc_journal
// target's seed: every record kind a real agent writes (snapshots, pushes, pops, a rewrite).
void JournalSeed(const std::string& name, const std::string& script) {
  JobRequestSim sim;
  sim.KeepDurable();
  tern::fuzz::Records records(reinterpret_cast<const std::uint8_t*>(script.data()), script.size());
  while (auto record = records.Next()) sim.Play(*record);
  const std::string& file = sim.journal(0);
  Write("ipc_journal", name, std::string(1, '\0') + file);
  // The same records for the target's mode that frames them itself (checksums right).
  auto kept = tern::ipc::ReadStateRecords(file, tern::ipc::kJournalMagic);
  if (!kept) return;
  std::string framed(1, '\1');
  for (std::string_view payload : kept->records) framed += Record(0, std::string(payload));
  Write("ipc_journal", name + "-records", framed);
}

std::vector<std::string> JobRequestSeeds() {
  std::vector<std::string> remote_frames;
  {  // a port, a message to it, and its receive, on one node
    Script s;
    const auto port = s.AskName(0, 0, JobOp::kPortAllocate, U32s({0}));
    const auto send = s.AskName(0, 0, JobOp::kMakeSend, U32s({port}));
    s.Ask(0, 0, JobOp::kSend, SendBody(send, "hello"));
    s.Ask(0, 0, JobOp::kPortStatus, U32s({port}));
    s.Ask(0, 0, JobOp::kReceive, U32s({port, 0}));
    s.Ask(0, 0, JobOp::kRightInfo, U32s({send}));
    s.Ask(0, 0, JobOp::kDeallocate, U32s({send}));
    Write("job_request", "local-send-receive", s.bytes());
    JournalSeed("local-send-receive", s.bytes());
  }
  {  // a name registered on node 1, looked up and called from node 2
    Script s;
    const auto port = s.AskName(0, 0, JobOp::kPortAllocate, U32s({4}));
    const auto send = s.AskName(0, 0, JobOp::kMakeSend, U32s({port}));
    WireWriter reg;
    reg.Bytes("svc");
    reg.U32(send);
    s.Ask(0, 0, JobOp::kNameRegister, reg.Take());
    s.Ask(0, 0, JobOp::kRequestNotification, [&] {
      WireWriter w;
      w.U32(send);
      w.U8(static_cast<std::uint8_t>(tern::ipc::NotificationKind::kNoSenders));
      w.U32(port);
      return w.Take();
    }());
    WireWriter lookup;
    lookup.Bytes("svc");
    s.Ask(1, 2, JobOp::kNameLookup, lookup.Take());
    s.Event(JobRequestSim::kDeliver);
    s.Event(JobRequestSim::kDeliver);
    s.Event(JobRequestSim::kDeliver);
    auto& replies = const_cast<JobRequestSim&>(s.sim()).replies()["c"];
    std::uint32_t remote = 0;
    if (!replies.empty()) {
      tern::ipc::WireReader r(
          std::string_view(replies.back()).substr(tern::ipc::kJobReplyHeaderSize));
      remote = r.U32().value_or(0);
    }
    s.Ask(1, 2, JobOp::kSend, SendBody(remote, "over the wire", tern::ipc::FullPolicy::kWait, 50));
    s.Event(JobRequestSim::kDeliver);
    s.Event(JobRequestSim::kDeliver);
    s.Ask(0, 0, JobOp::kReceiveMany, U32s({port, 0, 8}));
    s.Event(JobRequestSim::kRestart, 1, 2);
    s.Event(JobRequestSim::kDeliver);
    s.Event(JobRequestSim::kDeliver);
    s.Ask(0, 0, JobOp::kReceive, U32s({port, 10}));
    s.Event(JobRequestSim::kTimer);
    Write("job_request", "remote-name-lookup", s.bytes());
    JournalSeed("remote-name-lookup", s.bytes());
    remote_frames = s.sim().delivered();
  }
  {  // a link, a send and a receive on it, waited for
    Script s;
    const std::string link = s.Ask(0, 1, JobOp::kLinkCreate, "");
    tern::ipc::WireReader ends(link);
    const auto e1 = ends.U32().value_or(0), e2 = ends.U32().value_or(0);
    WireWriter w;
    w.U32(e1);
    w.WriteMessage(DataMessage(0, "on a link"));
    const auto op = s.AskName(0, 1, JobOp::kLinkSend, w.Take());
    const auto rx = s.AskName(0, 1, JobOp::kLinkReceive, U32s({e2}));
    s.Ask(0, 1, JobOp::kOpWait, U32s({op, 0}));
    s.Ask(0, 1, JobOp::kOpPoll, U32s({rx}));
    s.Ask(0, 1, JobOp::kOpCancel, U32s({rx}));
    s.Event(JobRequestSim::kMove, 0, 1);
    s.Event(JobRequestSim::kDeliver);
    Write("job_request", "link-and-move", s.bytes());
    JournalSeed("link-and-move", s.bytes());
  }
  {  // a region; a train of messages; a call (send + receive in one)
    Script s;
    WireWriter size;
    size.U64(4096);
    const auto region = s.AskName(0, 0, JobOp::kRegionCreate, size.Take());
    s.Ask(0, 0, JobOp::kRegionMap, U32s({region}));
    const auto port = s.AskName(0, 0, JobOp::kPortAllocate, U32s({2}));
    const auto send = s.AskName(0, 0, JobOp::kMakeSend, U32s({port}));
    WireWriter train;
    train.U8(static_cast<std::uint8_t>(tern::ipc::FullPolicy::kFail));
    train.U32(0);
    train.U32(0);
    train.U32(3);
    for (int i = 0; i < 3; ++i) train.WriteMessage(DataMessage(send, "train " + std::to_string(i)));
    s.Ask(0, 0, JobOp::kSendBatch, train.Take());
    const auto reply_port = s.AskName(0, 0, JobOp::kPortAllocate, U32s({0}));
    WireWriter call;
    call.U32(reply_port);
    call.U32(5);
    call.out() += SendBody(send, "call");
    s.Ask(0, 0, JobOp::kSendReceive, call.Take());
    s.Event(JobRequestSim::kTimer);
    s.Ask(0, 0, JobOp::kDirectOpen, U32s({send}));
    s.Ask(0, 0, JobOp::kDirectAccept, U32s({port, 0}));
    Write("job_request", "region-train-call", s.bytes());
    JournalSeed("region-train-call", s.bytes());
  }
  Write("job_request", "junk-import",
        Record(JobRequestSim::Tag(JobRequestSim::kMove, 0, 0),
               std::string("\x00\x00\x00\x01junk", 8)));
  return remote_frames;
}

void PeerFrameSeeds(const std::vector<std::string>& remote_frames) {
  using tern::ipc::FrameType;
  // The target's FuzzedDataProvider takes its control bytes from the end: the limit (16 MiB),
  // Feed rather than Prepare, then piece sizes.
  const std::string tail = std::string("\x10\x00\x00\x12", 4);
  std::string ipc;
  for (const auto& payload : remote_frames)
    ipc += tern::ipc::EncodeFrame(FrameType::kIpcRemote, payload);
  Write("peer_frame", "ipc-remote", ipc + tail);

  tern::agent::ApiCall call;
  call.method = "GET";
  call.target = "/v1/jobs/node1.3?local=1";
  call.caller.uid = 1000;
  call.caller.identified = true;
  call.caller.via = "unix";
  tern::agent::ApiResult result;
  result.body = R"({"jobs":[]})";
  result.headers.emplace_back("X-Tern", "1");
  std::string mixed;
  mixed += tern::ipc::EncodeFrame(FrameType::kApiRequest, tern::agent::EncodeApiRequest(42, call));
  mixed +=
      tern::ipc::EncodeFrame(FrameType::kApiResponse, tern::agent::EncodeApiResponse(42, result));
  mixed += tern::ipc::EncodeFrame(
      FrameType::kGossip,
      R"({"entries":[{"load":{"node":"node2","node_id":"0000000000000002","seq":3},"age_ms":10,"dead":false}]})");
  mixed += tern::ipc::EncodeFrame(FrameType::kLinkIdle, R"({"step":"ask"})");
  mixed += tern::ipc::EncodeFrame(FrameType::kIpcBlastAck, tern::ipc::EncodeBlastAck(9, 0));
  WireWriter blast;
  blast.U64(9);
  blast.U32(0);
  blast.U32(1);
  blast.out() += remote_frames.empty() ? std::string() : remote_frames.front();
  mixed += tern::ipc::EncodeFrame(FrameType::kIpcBlast, blast.Take());
  mixed += tern::ipc::EncodeFrame(FrameType::kIpcDirect,
                                  tern::ipc::EncodeDirectFrame(tern::ipc::DirectAsk{5, 2, {1, 7}}));
  Write("peer_frame", "mixed", mixed + tail);
  // A header that declares more than the limit (64 B: limit exponent 0).
  Write("peer_frame", "oversize",
        tern::ipc::EncodeFrame(FrameType::kGossip, std::string(100, 'x')) +
            std::string("\x00\x10\x00\x00", 4));
}

void ApiSeeds() {
  Write("api_request", "get-job", "GET /v1/jobs/node1.3?local=1 HTTP/1.1\r\nHost: tern\r\n\r\n");
  const std::string body = R"({"argv":["sleep","10"],"name":"nap","env":{"A":"b"},"pin":false})";
  Write(
      "api_request", "post-submit",
      "POST /v1/jobs HTTP/1.1\r\nHost: tern\r\nContent-Type: application/json\r\nContent-Length: " +
          std::to_string(body.size()) + "\r\n\r\n" + body);
  Write("api_request", "chunked",
        "POST /v1/jobs/node1.3/migrate HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        "b\r\n{\"to\":\"n2\"}\r\n0\r\n\r\n");
  Write("api_request", "path-trick",
        "GET /v1/migrations/..%2F..%2Ftmp%2Fx?since=3&a+b=%41 HTTP/1.1\r\n\r\n");
  tern::agent::ApiCall call;
  call.method = "POST";
  call.target = "/v1/migrations/node1.3-0000abcd/commit";
  call.body = R"({"job":"node1.3"})";
  call.caller.uid = 0;
  call.caller.identified = true;
  call.caller.via = "peer node1";
  Write("api_request", "peer-call", tern::agent::EncodeApiRequest(7, call));
  tern::agent::ApiResult result;
  result.status = 404;
  result.body = R"({"error":"no such job"})";
  Write("api_request", "peer-answer", tern::agent::EncodeApiResponse(7, result));
}

std::string ArchiveEntry(const std::string& path, std::uint32_t mode, const std::string& bytes) {
  WireWriter w;
  w.U32(static_cast<std::uint32_t>(path.size()));
  w.out() += path;
  w.U64(bytes.size());
  w.U32(mode);
  w.out() += bytes;
  return w.Take();
}

void ArchiveSeeds() {
  char dir_template[] = "/tmp/tern-fuzz-seeds.XXXXXX";
  const fs::path dir = ::mkdtemp(dir_template);
  fs::create_directories(dir / "images" / "sub");
  std::ofstream(dir / "stdout") << "output\n";
  std::ofstream(dir / "images" / "pages-1.img") << std::string(64, '\x01');
  std::ofstream(dir / "images" / "sub" / "x") << "x";
  fs::create_symlink("images/pages-1.img", dir / "link");
  auto packed = tern::migrate::PackDirectory(dir.string(), {}, 1 << 20);
  fs::remove_all(dir);
  if (packed) Write("archive", "packed", *packed);
  // What an attacker would try: through a symlink, up and out, absolute.
  Write("archive", "through-symlink",
        ArchiveEntry("l", S_IFLNK | 0777, "../outside") + ArchiveEntry("l/x", 0644, "escaped"));
  Write("archive", "dot-dot", ArchiveEntry("a/../../outside/x", 0644, "escaped"));
  Write("archive", "absolute", ArchiveEntry("/tmp/tern-fuzz-escaped", 0644, "escaped"));
  Write("archive", "file-then-dir",
        ArchiveEntry("f", 0600, "f") + ArchiveEntry("f/g", 0600, "g") +
            ArchiveEntry("skipped", 04755, "s"));
}

void StatusSeeds() {
  Write("status_json", "exited", R"({"exit_code":0,"ended_at":"2026-12-04T12:00:00Z"})");
  Write("status_json", "signalled", R"({"signal":9,"ended_at":"2026-12-04T12:00:00.5Z"})");
  Write("status_json", "null-exit", R"({"exit_code":null})");
  Write("status_json", "time", "2026-12-04T23:59:60Z");
  tern::jobs::JobRecord job;
  job.id = "node1.12";
  job.name = "sleep";
  job.user = "alice";
  job.uid = 1000;
  job.gid = 1000;
  job.node = "node2";
  job.home_node = "node1";
  job.state = tern::jobs::JobState::kExited;
  job.argv = {"sleep", "1"};
  job.exit_code = 0;
  job.submitted_at = tern::jobs::Clock::time_point{} + std::chrono::hours(500000);
  job.started_at = job.submitted_at;
  job.ended_at = job.submitted_at + std::chrono::seconds(1);
  job.dir = "/var/lib/tern/jobs/node1.12";
  job.env = {{"HOME", "/home/alice"}};
  job.migrations.push_back({{"mode", "precopy"}, {"freeze_ms", 12}});
  Write("status_json", "record", tern::jobs::PersistentJson(job).dump());
}

void ConfigSeeds(const fs::path& repo) {
  std::ifstream example(repo / "deploy" / "ternd.toml.example");
  std::string text(std::istreambuf_iterator<char>(example), {});
  // ASCII only: the config target leaves other input out (config_fuzz.cpp says why).
  std::erase_if(text, [](char c) { return static_cast<unsigned char>(c) >= 0x80; });
  Write("config", "example", text);
  Write("config", "small",
        "[node]\nname = \"node1\"\nstate_dir = \"/var/lib/tern\"\n[cluster]\nlisten = "
        "\"0.0.0.0:7100\"\n"
        "seeds = [\"10.0.0.2:7100\"]\nheartbeat_ms = 500\nmax_links = 8\n[jobs]\ncancel_grace_ms = "
        "2000\n");
  Write("config", "wrong-types",
        "[cluster]\nheartbeat_ms = \"fast\"\nmax_links = -1\nseeds = 3\n[node\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: tern-fuzz-seeds OUTDIR REPO\n";
    return 2;
  }
  out_dir = argv[1];
  PeerFrameSeeds(JobRequestSeeds());
  ApiSeeds();
  ArchiveSeeds();
  StatusSeeds();
  ConfigSeeds(argv[2]);
  std::cout << "seeds written below " << out_dir << "\n";
  return 0;
}
