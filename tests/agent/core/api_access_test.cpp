#include "api_access.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <tern/http/tokens.hpp>

#include "tern/agent/agent_api.hpp"
#include "tls_test_certs.hpp"

namespace tern::agent {
namespace {

namespace bhttp = boost::beast::http;

http::Request Header(const std::string& authorization) {
  http::Request request{bhttp::verb::get, "/v1/jobs", 11};
  if (!authorization.empty()) request.set(bhttp::field::authorization, authorization);
  return request;
}

class ApiAccessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ =
        (std::filesystem::temp_directory_path() / ("tern-api-tokens-" + std::to_string(getpid())))
            .string();
    std::filesystem::remove(path_);
  }
  void TearDown() override { std::filesystem::remove(path_); }
  std::string path_;
  const uid_t me_ = geteuid();
};

TEST_F(ApiAccessTest, TcpNeedsAKnownToken) {
  auto reader = http::CreateToken(path_, "dash", http::TokenAccess::kReadOnly, me_);
  auto admin = http::CreateToken(path_, "ops", http::TokenAccess::kAdmin, me_);
  ASSERT_TRUE(reader && admin);

  http::Caller nobody;
  auto refused = AuthenticateTcp(path_, Header(""), nobody, me_);
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->result_int(), 401u);
  EXPECT_NE(refused->body().find("tern token create"), std::string::npos) << refused->body();
  http::Caller basic;
  EXPECT_TRUE(AuthenticateTcp(path_, Header("Basic abc"), basic, me_));
  http::Caller wrong;
  EXPECT_TRUE(AuthenticateTcp(path_, Header("Bearer tern_" + std::string(64, '0')), wrong, me_));

  http::Caller viewer;
  EXPECT_FALSE(AuthenticateTcp(path_, Header("Bearer " + reader->token), viewer, me_));
  EXPECT_EQ(viewer.access, http::Caller::Access::kReadOnly);
  const ApiCaller viewer_call = ApiCallerOf(viewer);
  EXPECT_FALSE(viewer_call.identified) << "read-only: may not write";
  EXPECT_FALSE(JobViewerOf(viewer_call)) << "but reads every job";

  http::Caller root;
  EXPECT_FALSE(AuthenticateTcp(path_, Header("Bearer " + admin->token), root, me_));
  const ApiCaller root_call = ApiCallerOf(root);
  EXPECT_TRUE(root_call.identified);
  EXPECT_EQ(root_call.uid, 0u) << "an admin token acts as root";
  EXPECT_NE(root_call.via.find("token ops"), std::string::npos) << root_call.via;

  ASSERT_TRUE(http::RevokeToken(path_, "ops", me_));
  http::Caller revoked;
  EXPECT_TRUE(AuthenticateTcp(path_, Header("Bearer " + admin->token), revoked, me_));
}

TEST_F(ApiAccessTest, ABrowserMayCarryItsTokenInACookieAndLoadThePageWithout) {
  auto reader = http::CreateToken(path_, "dash", http::TokenAccess::kReadOnly, me_);
  ASSERT_TRUE(reader);
  EXPECT_EQ(TokenCookie("a=1; tern_token=" + reader->token + "; b=2"), reader->token);
  EXPECT_EQ(TokenCookie("xtern_token=abc"), "");
  EXPECT_EQ(TokenCookie(""), "");

  // EventSource sends cookies, not headers.
  http::Request stream{bhttp::verb::get, "/v1/events", 11};
  stream.set(bhttp::field::cookie, "tern_token=" + reader->token);
  http::Caller browser;
  EXPECT_FALSE(AuthenticateTcp(path_, stream, browser, me_));
  EXPECT_EQ(browser.access, http::Caller::Access::kReadOnly);
  stream.set(bhttp::field::cookie, "tern_token=tern_" + std::string(64, '0'));
  http::Caller forged;
  EXPECT_TRUE(AuthenticateTcp(path_, stream, forged, me_));

  // The page itself holds no data: it loads without a token, and nothing else does.
  http::Caller anyone;
  EXPECT_FALSE(AuthenticateTcp(path_, http::Request{bhttp::verb::get, "/", 11}, anyone, me_));
  EXPECT_EQ(anyone.access, http::Caller::Access::kNone);
  for (const char* target : {"/v1/jobs", "/metrics", "/v1/events", "/v1/info"}) {
    http::Caller stranger;
    auto refused =
        AuthenticateTcp(path_, http::Request{bhttp::verb::get, target, 11}, stranger, me_);
    ASSERT_TRUE(refused) << target;
    EXPECT_EQ(refused->result_int(), 401u) << target;
  }
  http::Caller poster;
  EXPECT_TRUE(AuthenticateTcp(path_, http::Request{bhttp::verb::post, "/", 11}, poster, me_));
}

TEST_F(ApiAccessTest, UnixCallersAreWhoTheKernelSays) {
  http::Caller unix_caller;
  unix_caller.transport = http::Caller::Transport::kUnix;
  unix_caller.uid = 1000;
  unix_caller.gid = 1000;
  const ApiCaller call = ApiCallerOf(unix_caller);
  EXPECT_TRUE(call.identified);
  EXPECT_EQ(call.uid, 1000u);
  ASSERT_TRUE(JobViewerOf(call));
  EXPECT_EQ(*JobViewerOf(call), 1000u) << "a user sees their own jobs";
  unix_caller.uid = 0;
  EXPECT_FALSE(JobViewerOf(ApiCallerOf(unix_caller))) << "root sees all";
}

TEST(TcpApiTlsTest, LoopbackIsPlainAndAnythingElseSpeaksTlsOrDoesNotStart) {
  AgentConfig config;
  config.api_listen = "127.0.0.1:7070";
  auto plain = TcpApiTls(config);
  ASSERT_TRUE(plain) << plain.error().message;
  EXPECT_EQ(*plain, nullptr);
  config.api_listen = "[::1]:7070";
  ASSERT_TRUE(TcpApiTls(config));
  EXPECT_EQ(*TcpApiTls(config), nullptr);

  config.api_listen = "0.0.0.0:7070";
  config.tls_ca = config.tls_cert = config.tls_key = "/nonexistent/tern-test";
  auto refused = TcpApiTls(config);
  ASSERT_FALSE(refused) << "an exposed API without TLS";
  EXPECT_NE(refused.error().message.find("TLS"), std::string::npos) << refused.error().message;

  ipc::testing::TestCa ca;
  const auto files = ca.Issue("node1");
  config.tls_ca = files.ca;
  config.tls_cert = files.cert;
  config.tls_key = files.key;
  auto tls = TcpApiTls(config);
  ASSERT_TRUE(tls) << tls.error().message;
  EXPECT_NE(*tls, nullptr);
}

}  // namespace
}  // namespace tern::agent
