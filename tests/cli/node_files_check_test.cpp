// tern doctor's checks of a node's config, secret and certificates (node_files_check.hpp).
#include "tern/cli/node_files_check.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "tern/ipc/tls_issue.hpp"

namespace tern::cli {
namespace {

namespace fs = std::filesystem;

class NodeFilesCheckTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("tern-node-files-" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    ASSERT_TRUE(ipc::CreateClusterCa(dir_ / "ca"));
    ASSERT_TRUE(ipc::IssueNodeCertificate(
        {.node = "node7", .ips = {"10.0.0.7"}, .ca_dir = dir_ / "ca", .out_dir = dir_ / "out"}));
    Write(dir_ / "secret", "abc", 0600);
  }
  void TearDown() override { fs::remove_all(dir_); }

  static void Write(const fs::path& path, const std::string& text, mode_t mode) {
    std::ofstream(path) << text;
    ::chmod(path.c_str(), mode);
  }

  std::string Config(const std::string& name, const std::string& extra = "") {
    const auto path = dir_ / "ternd.toml";
    Write(path,
          "[node]\nname = \"" + name + "\"\n[cluster]\nseeds = [\"10.0.0.1:7071\"]\n" +
              "secret_file = \"" + (dir_ / "secret").string() + "\"\n[tls]\nca = \"" +
              (dir_ / "ca/ca.crt").string() + "\"\ncert = \"" + (dir_ / "out/node7.crt").string() +
              "\"\nkey = \"" + (dir_ / "out/node7.key").string() + "\"\n" + extra,
          0644);
    return path;
  }

  static const Check& Find(const std::vector<Check>& checks, const std::string& name) {
    for (const auto& check : checks)
      if (check.name == name) return check;
    static const Check none{"none", "missing", "", ""};
    return none;
  }

  fs::path dir_;
};

TEST_F(NodeFilesCheckTest, AnInstalledNodesFilesPass) {
  auto checks = CheckNodeFiles(Config("node7"), false);
  for (const auto& check : checks)
    EXPECT_EQ(check.status, "ok") << check.name << ": " << check.detail;
  EXPECT_EQ(checks.size(), 4u);
}

TEST_F(NodeFilesCheckTest, ACertificateOfAnotherNodeFails) {
  const auto checks = CheckNodeFiles(Config("node8"), false);
  const auto& tls = Find(checks, "certificates");
  EXPECT_EQ(tls.status, "fail");
  EXPECT_NE(tls.detail.find("is not for node 'node8'"), std::string::npos) << tls.detail;
  EXPECT_NE(tls.fix.find("tern tls issue node8"), std::string::npos) << tls.fix;
}

TEST_F(NodeFilesCheckTest, AKeyOthersCanReadFails) {
  ::chmod((dir_ / "out/node7.key").c_str(), 0644);
  const auto checks = CheckNodeFiles(Config("node7"), false);
  const auto& tls = Find(checks, "certificates");
  EXPECT_EQ(tls.status, "fail");
  EXPECT_NE(tls.fix.find("chmod 0600"), std::string::npos) << tls.fix;
}

TEST_F(NodeFilesCheckTest, ACertificateOfAnotherCaFails) {
  ASSERT_TRUE(ipc::CreateClusterCa(dir_ / "other"));
  fs::copy_file(dir_ / "other/ca.crt", dir_ / "ca/ca.crt", fs::copy_options::overwrite_existing);
  const auto checks = CheckNodeFiles(Config("node7"), false);
  const auto& other = Find(checks, "certificates");
  EXPECT_EQ(other.status, "fail");
}

TEST_F(NodeFilesCheckTest, AMissingOrOpenSecretFails) {
  ::chmod((dir_ / "secret").c_str(), 0644);
  EXPECT_EQ(Find(CheckNodeFiles(Config("node7"), false), "secret").status, "fail");
  fs::remove(dir_ / "secret");
  const auto checks = CheckNodeFiles(Config("node7"), false);
  const auto& secret = Find(checks, "secret");
  EXPECT_EQ(secret.status, "fail");
  EXPECT_NE(secret.detail.find("no "), std::string::npos) << secret.detail;
}

TEST_F(NodeFilesCheckTest, BadTomlNamesTheLine) {
  Write(dir_ / "bad.toml", "[node]\nname = \n", 0644);
  auto checks = CheckNodeFiles(dir_ / "bad.toml", false);
  ASSERT_EQ(checks.size(), 1u);
  EXPECT_EQ(checks[0].status, "fail");
  EXPECT_NE(checks[0].detail.find("bad.toml:2"), std::string::npos) << checks[0].detail;
}

TEST_F(NodeFilesCheckTest, NoConfigAtTheDefaultPathIsNotAnInstalledNode) {
  auto checks = CheckNodeFiles(dir_ / "absent.toml", true);
  ASSERT_EQ(checks.size(), 1u);
  EXPECT_EQ(checks[0].status, "ok");
  EXPECT_EQ(CheckNodeFiles(dir_ / "absent.toml", false)[0].status, "fail");
}

TEST_F(NodeFilesCheckTest, NoSeedsIsOnlyAWarning) {
  const auto path = Config("node7");
  std::string text;
  {
    std::ifstream in(path);
    text.assign(std::istreambuf_iterator<char>(in), {});
  }
  text.replace(text.find("seeds = [\"10.0.0.1:7071\"]"), 25, "seeds = []");
  Write(path, text, 0644);
  EXPECT_EQ(Find(CheckNodeFiles(path, false), "seeds").status, "warn");
}

}  // namespace
}  // namespace tern::cli
