#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>

#include "tern/cli/commands.hpp"
#include "tern/cli/doctor.hpp"
#include "tern/cli/format.hpp"

namespace tern::cli {
namespace {

struct Run {
  int exit_code;
  std::string out;
  std::string err;
};

// Runs the real `tern` binary; stderr goes to a temporary file.
Run Tern(const std::string& args) {
  const std::string err_file = "/tmp/tern-cli-test-" + std::to_string(getpid()) + ".err";
  const std::string command = std::string(TERN_CLI_PATH) + " " + args + " 2>" + err_file;
  std::unique_ptr<FILE, int (*)(FILE*)> pipe(::popen(command.c_str(), "r"), ::pclose);
  std::string out;
  std::array<char, 4096> buffer{};
  size_t n;
  while ((n = std::fread(buffer.data(), 1, buffer.size(), pipe.get())) > 0)
    out.append(buffer.data(), n);
  const int status = ::pclose(pipe.release());
  std::string err;
  if (FILE* file = std::fopen(err_file.c_str(), "r")) {
    while ((n = std::fread(buffer.data(), 1, buffer.size(), file)) > 0)
      err.append(buffer.data(), n);
    std::fclose(file);
  }
  std::remove(err_file.c_str());
  return {WEXITSTATUS(status), out, err};
}

TEST(FormatTest, HumanUnits) {
  EXPECT_EQ(HumanBytes(0), "0");
  EXPECT_EQ(HumanBytes(512), "512B");
  EXPECT_EQ(HumanBytes(12 * 1024 + 300), "12K");
  EXPECT_EQ(HumanBytes(5 * 1024 * 1024 / 2), "2.5M");
  EXPECT_EQ(HumanBytes(24ull << 30), "24G");
  EXPECT_EQ(HumanAge(45.9), "45s");
  EXPECT_EQ(HumanAge(185), "3m");
  EXPECT_EQ(HumanAge(7300), "2h");
  EXPECT_EQ(HumanAge(5 * 86400 + 5), "5d");
  EXPECT_EQ(HumanCpu(1.25), "1.2s");
  EXPECT_EQ(HumanCpu(95), "1m");
}

TEST(FormatTest, TableAlignsColumns) {
  Table table({"ID", "STATE"});
  table.Add({"node1.10", "running"});
  table.Add({"n.2", "exited(3)"});
  EXPECT_EQ(table.Render(),
            "ID         STATE\n"
            "node1.10   running\n"
            "n.2        exited(3)\n");
}

TEST(SubmitBodyTest, CarriesCommandEnvironmentAndOverrides) {
  SubmitOptions options;
  options.argv = {"sh", "-c", "echo $X"};
  options.node = "node2";
  options.env = {"X=1", "EMPTY="};
  auto body = SubmitBody(options, {{"PATH", "/bin"}, {"X", "0"}, {"TERN_SOCKET", "/s"}});
  ASSERT_TRUE(body);
  auto json = nlohmann::json::parse(*body);
  EXPECT_EQ(json["argv"], nlohmann::json({"sh", "-c", "echo $X"}));
  EXPECT_EQ(json["node"], "node2");
  EXPECT_EQ(json["env"]["X"], "1");
  EXPECT_EQ(json["env"]["EMPTY"], "");
  EXPECT_EQ(json["env"]["PATH"], "/bin");
  EXPECT_FALSE(json["env"].contains("TERN_SOCKET"));
  EXPECT_FALSE(json.contains("user"));
  options.env = {"novalue"};
  EXPECT_FALSE(SubmitBody(options, {}));
}

TEST(SubmitBodyTest, PinIsSentOnlyWhenAsked) {
  SubmitOptions options;
  options.argv = {"true"};
  auto plain = nlohmann::json::parse(*SubmitBody(options, {}));
  EXPECT_FALSE(plain.contains("pin"));
  EXPECT_FALSE(plain.contains("node")) << "without --node the agent places the job";
  options.pin = true;
  EXPECT_EQ(nlohmann::json::parse(*SubmitBody(options, {}))["pin"], true);
}

TEST(EventLineTest, BalancerEventsSayWhatAndWhy) {
  nlohmann::json move = {
      {"type", "balancer"}, {"time", "2026-12-04T10:00:00.000Z"},
      {"node", "node1"},    {"action", "migrate"},
      {"job", "node1.4"},   {"to", "node3"},
      {"kind", "balance"},  {"reason", "node1 demand 3.0 of 0.5 CPU, node3 0.1 of 0.5"}};
  EXPECT_EQ(EventLine(move),
            "2026-12-04T10:00:00.000Z  node1  balancer  migrate node1.4 -> node3 (balance): "
            "node1 demand 3.0 of 0.5 CPU, node3 0.1 of 0.5");
  nlohmann::json skip = {{"type", "balancer"}, {"time", "t"},      {"node", "node3"},
                         {"action", "skip"},   {"job", "node3.2"}, {"reason", "pinned"}};
  EXPECT_EQ(EventLine(skip), "t  node3  balancer  skip node3.2: pinned");
  nlohmann::json job = {{"type", "job"},   {"time", "t"},        {"node", "node2"},
                        {"id", "node1.1"}, {"state", "running"}, {"pinned", true}};
  EXPECT_EQ(EventLine(job), "t  node2  job  node1.1 running on node2 (pinned)");
}

TEST(EncodeTest, PathSegmentsAreEscaped) {
  EXPECT_EQ(EncodePathSegment("node1.4"), "node1.4");
  EXPECT_EQ(EncodePathSegment("a/b c"), "a%2Fb%20c");
}

TEST(DoctorTest, ParsesCriuVersions) {
  EXPECT_EQ(ParseCriuVersion("Version: 4.2.1\n"), std::make_pair(4, 2));
  EXPECT_EQ(ParseCriuVersion("Version: 3.17\nGitID: x"), std::make_pair(3, 17));
  EXPECT_EQ(ParseCriuVersion("garbage"), std::make_pair(0, 0));
}

TEST(CliBinaryTest, UsageErrorsExitTwo) {
  EXPECT_EQ(Tern("").exit_code, 2);
  EXPECT_EQ(Tern("ps --output yaml").exit_code, 2);
  EXPECT_EQ(Tern("submit").exit_code, 2);
  EXPECT_EQ(Tern("status").exit_code, 2);
  EXPECT_EQ(Tern("frobnicate").exit_code, 2);
  EXPECT_EQ(Tern("pin").exit_code, 2) << "pin needs a job";
  EXPECT_EQ(Tern("unpin").exit_code, 2);
  EXPECT_EQ(Tern("drain").exit_code, 2) << "drain needs a node";
  EXPECT_EQ(Tern("undrain").exit_code, 2);
  EXPECT_EQ(Tern("drain node1 node2").exit_code, 2) << "one node at a time";
  EXPECT_EQ(Tern("events --type frogs").exit_code, 2);
  EXPECT_EQ(Tern("events -n 0").exit_code, 2);
  EXPECT_EQ(Tern("events -o yaml").exit_code, 2);
  EXPECT_EQ(Tern("--help").exit_code, 0);
}

TEST(CliBinaryTest, NoAgentIsOneClearLineAndExitOne) {
  for (const char* command : {"ps", "nodes", "status x", "submit -- true", "cancel x", "logs x",
                              "pin x", "unpin x", "drain node1", "undrain node1", "events",
                              "events -f", "events -f -A", "submit --pin -- true"}) {
    auto run = Tern(std::string("--node-socket /nonexistent/tern.sock ") + command);
    EXPECT_EQ(run.exit_code, 1) << command;
    EXPECT_EQ(run.err,
              "tern: cannot reach the agent at /nonexistent/tern.sock: No such file or directory "
              "(is ternd running? try 'tern doctor')\n")
        << command;
    EXPECT_TRUE(run.out.empty()) << command;
  }
}

TEST(CliBinaryTest, RecoverTakesExactlyOneChoiceAndItsHelpSaysWhen) {
  EXPECT_EQ(Tern("recover").exit_code, 2) << "recover needs a job";
  auto none = Tern("recover node1.1");
  EXPECT_EQ(none.exit_code, 2);
  EXPECT_NE(none.err.find("--resume-here or --discard"), std::string::npos) << none.err;
  EXPECT_EQ(Tern("recover node1.1 --resume-here --discard").exit_code, 2);
  auto help = Tern("recover --help");
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_NE(help.out.find("--resume-here"), std::string::npos) << help.out;
  EXPECT_NE(help.out.find("--discard"), std::string::npos) << help.out;
  EXPECT_NE(help.out.find("refused while the outcome can still be learned"), std::string::npos)
      << help.out;
  EXPECT_NE(Tern("--help").out.find("recover"), std::string::npos);
  auto unreachable = Tern("--node-socket /nonexistent/tern.sock recover x --discard");
  EXPECT_EQ(unreachable.exit_code, 1) << unreachable.err;
}

TEST(CliBinaryTest, EnvironmentNamesTheSocket) {
  auto run = Tern("ps");
  (void)run;
  setenv("TERN_SOCKET", "/nonexistent/env.sock", 1);
  auto with_env = Tern("ps");
  unsetenv("TERN_SOCKET");
  EXPECT_NE(with_env.err.find("/nonexistent/env.sock"), std::string::npos) << with_env.err;
}

}  // namespace
}  // namespace tern::cli
