// The migration protocol's one codec: every message comes back as it went, the bytes are those
// the agent sent before (an agent on either side of the switch understands the other), and what
// a peer sends malformed is an error that says what is wrong, never a crash.
#include "tern/migrate/protocol_codec.hpp"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <random>

#include "tern/migrate/migration_store.hpp"

namespace tern::migrate {
namespace {

using nlohmann::json;

constexpr char kId[] = "job-1.7-0123abcd";

PrepareRequest SamplePrepare() {
  PrepareRequest request;
  request.id = kId;
  request.job = R"({"id":"job-1.7","uid":1000})";
  request.mode = MoveMode::kPostCopy;
  request.channel = "socket:[4242]";
  request.closed_sockets = {"socket:[4243]", "socket:[4250]"};
  request.cpuinfo = std::string("\x00\x01\xfe\xff", 4);
  request.dir_device = 2049;
  request.dir_inode = 77;
  request.rss_bytes = 1ull << 30;
  request.outside.push_back({"/etc/hosts", 120, 0, 0, 0100644, std::string(64, 'e')});
  request.lazy_source = {"10.0.0.1", 7301};
  request.lazy_relay = "agents-tls";
  return request;
}

template <typename T>
T RoundTrip(const T& request) {
  const WireCall call = Encode(Request{request});
  auto decoded = DecodeRequest(call.method, call.target, call.body);
  EXPECT_TRUE(decoded) << decoded.error().message;
  return std::get<T>(*decoded);
}

template <typename T>
T RoundTripReply(const Request& answered, const T& reply) {
  auto decoded = DecodeReply(answered, Encode(Reply{reply}));
  EXPECT_TRUE(decoded) << decoded.error().message;
  return std::get<T>(*decoded);
}

TEST(ProtocolCodecTest, EveryRequestComesBackAsItWent) {
  EXPECT_EQ(RoundTrip(SamplePrepare()), SamplePrepare());
  PrepareRequest older = SamplePrepare();
  older.channel.reset();  // an older source names no channel
  older.closed_sockets.clear();
  EXPECT_EQ(RoundTrip(older), older);
  const RestoreRequest restore{kId, std::string("IMG\0ES", 6), "DIR"};
  EXPECT_EQ(RoundTrip(restore), restore);
  const CommitRequest commit{kId, R"({"dump_ms":12})", std::string("\x01{ipc\0", 6)};
  EXPECT_EQ(RoundTrip(commit), commit);
  EXPECT_EQ(RoundTrip(AbortRequest{kId}), AbortRequest{kId});
  EXPECT_EQ(RoundTrip(OutcomeQuery{kId}), OutcomeQuery{kId});
  EXPECT_EQ(RoundTrip(IpcStateQuery{kId}), IpcStateQuery{kId});
}

TEST(ProtocolCodecTest, EveryReplyComesBackAsItWent) {
  const PrepareReply ready{
      kId, 200, "", R"([{"check":"criu","ok":true}])", true, Endpoint{"10.0.0.2", 7200}};
  EXPECT_EQ(RoundTripReply(PrepareRequest{kId}, ready), ready);
  const PrepareReply refused{kId, 409, "job x cannot move to d: no memory", "[]", false, {}};
  EXPECT_EQ(RoundTripReply(PrepareRequest{kId}, refused), refused);
  const RestoreReply restored{kId, 200, "", 4242, 12.5, 1 << 20};
  EXPECT_EQ(RoundTripReply(RestoreRequest{kId}, restored), restored);
  const CommitReply committed{kId, 200, "", R"({"id":"job-1.7","state":"running"})"};
  EXPECT_EQ(RoundTripReply(CommitRequest{kId}, committed), committed);
  EXPECT_EQ(RoundTripReply(AbortRequest{kId}, AbortReply{kId}), AbortReply{kId});
  for (Outcome outcome :
       {Outcome::kUnknown, Outcome::kPending, Outcome::kCommitted, Outcome::kAborted}) {
    const OutcomeReply reply{kId, outcome};
    EXPECT_EQ(RoundTripReply(OutcomeQuery{kId}, reply), reply);
  }
  const IpcStateReply state{kId, 200, std::string("\0\1\2", 3)};
  EXPECT_EQ(RoundTripReply(IpcStateQuery{kId}, state), state);
}

// The closed sockets become criu arguments at the destination ("fd[N]:socket:[INODE]"): a
// prepare call naming anything else is refused, not passed on.
TEST(ProtocolCodecTest, ClosedSocketsAreSocketNamesAndNothingElse) {
  const WireCall call = Encode(Request{SamplePrepare()});
  for (const json& bad : {json("socket:[12]x"), json("socket:[]"), json("pipe:[12]"),
                          json("socket:[1]:fd[3]"), json(12), json("socket:[-1]")}) {
    json body = json::parse(call.body);
    body["closed_sockets"] = json::array({bad});
    EXPECT_FALSE(DecodeRequest(call.method, call.target, body.dump())) << bad.dump();
  }
  json body = json::parse(call.body);
  body["closed_sockets"] = "socket:[12]";
  EXPECT_FALSE(DecodeRequest(call.method, call.target, body.dump())) << "not an array";
}

// The bytes the agent's MigrationDriver has sent since before this codec.
TEST(ProtocolCodecTest, TheBytesAreThoseOnTheWireToday) {
  const WireCall prepare = Encode(Request{SamplePrepare()});
  EXPECT_EQ(prepare.method, "POST");
  EXPECT_EQ(prepare.target, "/v1/migrations/prepare");
  const json body = json::parse(prepare.body);
  for (const char* key : {"id", "lazy_source", "job", "channel", "cpuinfo_hex", "dir_device",
                          "dir_inode", "mode", "dry_run", "rss_bytes", "outside"}) {
    EXPECT_TRUE(body.contains(key)) << key;
  }
  EXPECT_EQ(body["cpuinfo_hex"], "0001feff");
  EXPECT_EQ(body["mode"], "postcopy");
  EXPECT_EQ(body["lazy_source"]["relay"], "agents-tls");  // as b14-relay's driver sent it
  EXPECT_EQ(body["job"]["uid"], 1000);
  EXPECT_EQ(body["outside"][0]["sha256"], std::string(64, 'e'));

  const WireCall restore = Encode(Request{RestoreRequest{kId, "ABC", "DE"}});
  EXPECT_EQ(restore.target, std::string("/v1/migrations/") + kId + "/restore");
  EXPECT_EQ(restore.body, std::string("\0\0\0\0\0\0\0\3ABCDE", 13));

  const WireCall commit = Encode(Request{CommitRequest{kId, "{}", "S"}});
  EXPECT_EQ(commit.body, std::string("\0\0\0\2{}S", 7));
  // An older source's commit: the figures as JSON alone, no IPC state.
  auto older =
      DecodeRequest("POST", std::string("/v1/migrations/") + kId + "/commit", R"({"dump_ms":3})");
  ASSERT_TRUE(older) << older.error().message;
  EXPECT_EQ(std::get<CommitRequest>(*older).ipc_state, "");

  // An outcome the source has not recorded was "" before: unknown.
  auto outcome = DecodeReply(Request{OutcomeQuery{kId}}, {200, "", R"({"id":"x","outcome":""})"});
  ASSERT_TRUE(outcome);
  EXPECT_EQ(std::get<OutcomeReply>(*outcome).outcome, Outcome::kUnknown);
  // An error body is the agent's {"error": ...}.
  auto refused = DecodeReply(Request{PrepareRequest{kId}},
                             {409, "", R"({"error":"no memory","checks":[{"ok":false}]})"});
  ASSERT_TRUE(refused);
  EXPECT_EQ(std::get<PrepareReply>(*refused).error, "no memory");
  EXPECT_EQ(std::get<PrepareReply>(*refused).checks, R"([{"ok":false}])");
}

void ExpectRefused(std::string_view method, const std::string& target, const std::string& body,
                   const std::string& says) {
  auto decoded = DecodeRequest(method, target, body);
  ASSERT_FALSE(decoded) << target << " " << body.substr(0, 80);
  EXPECT_NE(decoded.error().message.find(says), std::string::npos)
      << decoded.error().message << " (wanted: " << says << ")";
}

TEST(ProtocolCodecTest, MalformedRequestsAreRefusedWithTheReason) {
  const std::string prepare = "/v1/migrations/prepare";
  json good = json::parse(Encode(Request{SamplePrepare()}).body);
  auto with = [&](const char* key, json value) {
    json body = good;
    body[key] = std::move(value);
    return body.dump();
  };
  ExpectRefused("POST", prepare, "not json", "not JSON");
  ExpectRefused("POST", prepare, "[1]", "not a JSON object");
  ExpectRefused("POST", prepare, with("id", "../../etc"), "not a migration id");
  ExpectRefused("POST", prepare, with("job", "x"), "\"job\" is not an object");
  ExpectRefused("POST", prepare, with("mode", "teleport"), "must be precopy or postcopy");
  ExpectRefused("POST", prepare, with("cpuinfo_hex", "abc"), "odd number");
  ExpectRefused("POST", prepare, with("cpuinfo_hex", "zz"), "not hexadecimal");
  ExpectRefused("POST", prepare, with("rss_bytes", -1), "rss_bytes");
  ExpectRefused("POST", prepare, with("dir_inode", 1e300), "dir_inode");
  ExpectRefused("POST", prepare, with("dry_run", "yes"), "not a boolean");
  ExpectRefused("POST", prepare, with("outside", json::array({1})), "not an object");
  ExpectRefused("POST", prepare, with("outside", json::array({{{"path", "rel"}}})), "absolute");
  ExpectRefused("POST", prepare, with("outside", json::array({{{"path", "/a"}, {"uid", 0.5}}})),
                "uid");
  ExpectRefused("POST", prepare, with("outside", json(std::vector<json>(4097, json::object()))),
                "over the limit");
  ExpectRefused("POST", prepare, std::string(CodecLimits::kMaxJsonBody + 1, ' '), "over the limit");
  const std::string base = std::string("/v1/migrations/") + kId;
  ExpectRefused("POST", base + "/restore", "short", "shorter than");
  ExpectRefused("POST", base + "/restore", std::string("\xff\0\0\0\0\0\0\0ab", 10), "longer");
  ExpectRefused("POST", base + "/commit", std::string("\0\0\0\x09{}", 6), "longer");
  ExpectRefused("POST", base + "/commit", std::string("\0\0\0\x02[]", 6), "not a JSON object");
  ExpectRefused("POST", base + "/teleport", "", "no such migration call");
  ExpectRefused("GET", "/v1/migrations/job-1.7-0123abcz", "", "not a migration id");
  ExpectRefused("GET", "/v1/jobs/x", "", "not a migration call");
}

TEST(ProtocolCodecTest, MalformedAnswersAreErrorsNotCrashes) {
  EXPECT_FALSE(DecodeReply(Request{PrepareRequest{kId}}, {200, "", "[]"}));
  EXPECT_FALSE(DecodeReply(Request{PrepareRequest{kId}}, {200, "", R"({"checks":3})"}));
  EXPECT_FALSE(DecodeReply(Request{RestoreRequest{kId}}, {200, "", R"({"pid":"x"})"}));
  EXPECT_FALSE(DecodeReply(Request{OutcomeQuery{kId}}, {200, "", R"({"outcome":"maybe"})"}));
  EXPECT_FALSE(DecodeReply(Request{OutcomeQuery{kId}}, {503, "", "node down"}));
  auto failed = DecodeReply(Request{RestoreRequest{kId}}, {502, "", "link lost"});
  ASSERT_TRUE(failed);
  EXPECT_EQ(std::get<RestoreReply>(*failed).error, "link lost");
}

// Random damage to valid bodies: always an answer (value or error), never a crash.
TEST(ProtocolCodecTest, DamagedBodiesNeverCrashTheDecoder) {
  std::mt19937_64 random(16);
  const std::vector<WireCall> calls = {Encode(Request{SamplePrepare()}),
                                       Encode(Request{RestoreRequest{kId, "IMG", "DIR"}}),
                                       Encode(Request{CommitRequest{kId, R"({"a":1})", "IPC"}})};
  int decoded = 0;
  for (int round = 0; round < 3000; ++round) {
    WireCall call = calls[round % calls.size()];
    const int edits = 1 + static_cast<int>(random() % 4);
    for (int i = 0; i < edits && !call.body.empty(); ++i) {
      const std::size_t at = random() % call.body.size();
      switch (random() % 3) {
        case 0:
          call.body[at] = static_cast<char>(random());
          break;
        case 1:
          call.body.erase(at, 1 + random() % 8);
          break;
        default:
          call.body.insert(at, 1, static_cast<char>(random()));
      }
    }
    if (DecodeRequest(call.method, call.target, call.body)) ++decoded;
  }
  EXPECT_GT(decoded, 0);  // some damage leaves a valid message; none crashes
}

TEST(MigrationStoreTest, RecordsReadBackAndBadOnesAreRefused) {
  const SourceRecord source{kId,
                            "job-1.7",
                            "node2",
                            MoveMode::kPostCopy,
                            SourceStage::kCommitted,
                            std::string("\0ipc\nstate", 10)};
  auto back = DecodeRecord(EncodeRecord(source));
  ASSERT_TRUE(back) << back.error().message;
  EXPECT_EQ(std::get<SourceRecord>(*back), source);
  const DestinationRecord destination{
      kId,  R"({"id":"job-1.7"})",       "node1", MoveMode::kPreCopy,
      true, DestinationStage::kRestored, 4242};
  back = DecodeRecord(EncodeRecord(destination));
  ASSERT_TRUE(back) << back.error().message;
  EXPECT_EQ(std::get<DestinationRecord>(*back), destination);
  EXPECT_FALSE(DecodeRecord(""));
  EXPECT_FALSE(DecodeRecord("{}\n"));
  EXPECT_FALSE(DecodeRecord(R"({"side":"source","id":"x","mode":"precopy","stage":"frozen"})"
                            "\n"));
  std::string wrong_stage = EncodeRecord(source);
  wrong_stage.replace(wrong_stage.find("committed"), 9, "committee");
  EXPECT_FALSE(DecodeRecord(wrong_stage));
}

}  // namespace
}  // namespace tern::migrate
