// CRIU's page server inside TLS, with the real CRIU (tests run as root, as the agent does): a
// client without a certificate of the cluster's CA gets no pages, and a dump through TLS works.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

#include "tern/migrate/criu.hpp"
#include "tern/migrate/subprocess.hpp"

namespace tern::migrate {
namespace {
namespace fs = std::filesystem;

std::string Read(const fs::path& path) {
  std::ifstream file(path);
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

bool HasPages(const fs::path& dir) {
  std::error_code error;
  for (const auto& entry : fs::directory_iterator(dir, error)) {
    if (entry.path().filename().string().rfind("pages-", 0) == 0) return true;
  }
  return false;
}

bool Listening(std::uint16_t port) {
  std::ifstream tcp("/proc/net/tcp");
  char wanted[8];
  std::snprintf(wanted, sizeof wanted, ":%04X", port);
  for (std::string line; std::getline(tcp, line);) {
    std::istringstream fields(line);
    std::string slot, local, remote, state;
    fields >> slot >> local >> remote >> state;
    if (state == "0A" && local.size() >= 5 && local.substr(local.size() - 5) == wanted) return true;
  }
  return false;
}

class CriuTlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    criu_ = FindCriu();
    ASSERT_FALSE(criu_.empty()) << "these tests need CRIU 4.2 with TLS (deploy/install-deps)";
    ASSERT_EQ(::geteuid(), 0u) << "CRIU needs root, as the agent has";
    dir_ = fs::temp_directory_path() / ("tern-criu-tls-" + std::to_string(getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_ / "images");
    // A cluster CA with two node certificates, and a stranger's CA with one of its own.
    const std::string d = dir_.string();
    const std::string script =
        "set -e; cd \"$0\"; "
        "key() { openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout $1.key "
        "-out $1.csr -subj /CN=$1 2>/dev/null; chmod 600 $1.key; }; "
        "ca() { openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "
        "$1.key -out $1.crt -days 2 -subj /CN=$1 2>/dev/null; }; "
        "sign() { printf 'subjectAltName=DNS:%s\\nextendedKeyUsage=serverAuth,clientAuth\\n' $1 "
        "> $1.ext; openssl x509 -req -in $1.csr -CA $2.crt -CAkey $2.key -CAcreateserial -out "
        "$1.crt -days 2 -extfile $1.ext 2>/dev/null; }; "
        "ca ca; ca other; key node1; sign node1 ca; key node2; sign node2 ca; key stranger; "
        "sign stranger other";
    auto made = RunSubprocess({"sh", "-c", script, d});
    ASSERT_TRUE(made && made->exit_code == 0)
        << "cannot make test certificates with openssl: " << (made ? made->output : "");
    tls1_ = {d + "/ca.crt", d + "/node1.crt", d + "/node1.key"};
    tls2_ = {d + "/ca.crt", d + "/node2.crt", d + "/node2.key"};
  }
  void TearDown() override { fs::remove_all(dir_); }

  // A TLS page server on 127.0.0.1, once it listens.
  BackgroundProcess StartPageServer(std::uint16_t port) {
    auto server = BackgroundProcess::Start(
        PageServerCommand(criu_, (dir_ / "images").string(), {"127.0.0.1", port}, tls2_),
        (dir_ / "page-server.out").string());
    EXPECT_TRUE(server) << server.error().message;
    if (!server) return {};
    // Not by connecting: the page server serves one connection only.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!Listening(port) && std::chrono::steady_clock::now() < deadline && server->Running()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    return std::move(*server);
  }

  std::string criu_;
  fs::path dir_;
  CriuTls tls1_, tls2_;
};

TEST(CriuTlsArgumentsTest, EveryPageConnectionCarriesTheFlags) {
  const CriuTls tls{"/etc/tern/tls/ca.crt", "/etc/tern/tls/node.crt", "/etc/tern/tls/node.key"};
  const std::vector<std::string> flags = {"--tls",
                                          "--tls-cacert",
                                          "/etc/tern/tls/ca.crt",
                                          "--tls-cert",
                                          "/etc/tern/tls/node.crt",
                                          "--tls-key",
                                          "/etc/tern/tls/node.key",
                                          "--tls-no-cn-verify"};
  EXPECT_EQ(CriuTlsArguments(tls), flags);
  EXPECT_TRUE(CriuTlsArguments({}).empty());
  auto contains = [&flags](const std::vector<std::string>& argv) {
    return std::search(argv.begin(), argv.end(), flags.begin(), flags.end()) != argv.end();
  };
  EXPECT_TRUE(contains(PageServerCommand("criu", "/i", {"10.0.0.2", 7200}, tls)));
  // Post-copy's CRIU opens no network socket (its agents relay the stream inside their TLS).
  for (const auto& argv :
       {LazyDumpCommand("criu", 42, "/i", 10), LazyPagesCommand("criu", "/i", 10, 9)}) {
    EXPECT_FALSE(contains(argv));
    EXPECT_EQ(std::find(argv.begin(), argv.end(), "--address"), argv.end());
    EXPECT_NE(std::find(argv.begin(), argv.end(), "--ps-socket"), argv.end());
  }
  EXPECT_FALSE(contains(PageServerCommand("criu", "/i", {"10.0.0.2", 7200})));
}

// Anyone who reaches the port with a plain TCP connection (the old attack: inject pages during
// pre-copy) gets nothing read and nothing written.
TEST_F(CriuTlsTest, APlainConnectionGetsNoPages) {
  const std::uint16_t port = static_cast<std::uint16_t>(7280 + getpid() % 10);
  auto server = StartPageServer(port);
  ASSERT_TRUE(server.Running()) << Read(dir_ / "images" / "page-server.log");
  const int sock = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(port);
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(sock, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
  // What a plain page-server client sends first: a PS_IOV header (cmd, nr_pages, vaddr, dst_id).
  const char header[24] = {1};
  (void)::write(sock, header, sizeof header);
  char buffer[4096];
  timeval limit{10, 0};
  ::setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit);
  ssize_t total = 0;
  for (ssize_t n; (n = ::read(sock, buffer, sizeof buffer)) > 0;) total += n;
  ::close(sock);
  // The TLS server may answer with a handshake alert (a few bytes of TLS record), never data.
  EXPECT_LT(total, 64);
  EXPECT_EQ(server.Wait(std::chrono::seconds(10)).value_or(0) != 0, true)
      << "the page server took a connection that did not speak TLS";
  EXPECT_NE(Read(dir_ / "images" / "page-server.log").find("TLS handshake failed"),
            std::string::npos);
  EXPECT_FALSE(HasPages(dir_ / "images"));
}

// A client with a certificate from another CA (or none) is refused as well.
TEST_F(CriuTlsTest, AClientWithAStrangersCertificateIsRefused) {
  const std::uint16_t port = static_cast<std::uint16_t>(7270 + getpid() % 10);
  auto server = StartPageServer(port);
  ASSERT_TRUE(server.Running()) << Read(dir_ / "images" / "page-server.log");
  const std::string d = dir_.string();
  SubprocessOptions quick;
  quick.timeout = std::chrono::seconds(20);
  auto client = RunSubprocess(
      {"sh", "-c",
       "echo hello | openssl s_client -quiet -connect 127.0.0.1:" + std::to_string(port) +
           " -CAfile " + d + "/ca.crt -cert " + d + "/stranger.crt -key " + d + "/stranger.key"},
      quick);
  ASSERT_TRUE(client);
  EXPECT_EQ(server.Wait(std::chrono::seconds(10)).value_or(0) != 0, true)
      << "the page server served a stranger";
  const std::string log = Read(dir_ / "images" / "page-server.log");
  EXPECT_NE(log.find("Error (criu/tls.c"), std::string::npos) << log;
  EXPECT_FALSE(HasPages(dir_ / "images"));
}

// The real thing: tern's pre-copy dump (migrate::Dump) through TLS to a TLS page server.
TEST_F(CriuTlsTest, ADumpThroughTlsReachesThePageServer) {
  const std::uint16_t port = static_cast<std::uint16_t>(7260 + getpid() % 10);
  auto server = StartPageServer(port);
  ASSERT_TRUE(server.Running()) << Read(dir_ / "images" / "page-server.log");
  const pid_t job = ::fork();
  if (job == 0) {
    ::setsid();
    const int null = ::open("/dev/null", O_RDWR);
    for (int fd = 0; fd < 3; ++fd) ::dup2(null, fd);
    for (int fd = 3; fd < 1024; ++fd) ::close(fd);
    ::execlp("sleep", "sleep", "600", nullptr);
    ::_exit(127);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // exec'd
  DumpOptions options;
  options.pid = job;
  options.images = (dir_ / "source").string();
  options.page_server = PageServerTarget{"127.0.0.1", port};
  options.tls = tls1_;
  const auto start = std::chrono::steady_clock::now();
  auto dumped = Dump(criu_, options);
  const auto took = std::chrono::steady_clock::now() - start;
  ::kill(job, SIGKILL);
  ::waitpid(job, nullptr, 0);
  ASSERT_TRUE(dumped) << dumped.error().message;
  EXPECT_EQ(server.Wait(std::chrono::seconds(10)), std::optional<int>(0));
  EXPECT_TRUE(HasPages(dir_ / "images")) << "the pages went to the page server";
  const std::string log = Read(dir_ / "source" / "dump.log");
  EXPECT_NE(log.find("TLS handshake completed"), std::string::npos);
  // The cork on CRIU's socket is lifted (pidfd_getfd): its last message does not wait for the
  // kernel's 200 ms cork timer. The log's lines start with "(seconds.micros)".
  const auto disconnect = log.find("Disconnect from the page server");
  ASSERT_NE(disconnect, std::string::npos);
  const auto line_start = log.rfind('(', disconnect);
  const auto next_line = log.find("\n(", disconnect);
  ASSERT_NE(next_line, std::string::npos);
  const double said = std::stod(log.substr(line_start + 1));
  const double answered = std::stod(log.substr(next_line + 2));
  EXPECT_LT(answered - said, 0.15) << "the page server's answer waited for the cork timer";
  std::cout << "dump through TLS took "
            << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms\n";
}

}  // namespace
}  // namespace tern::migrate
