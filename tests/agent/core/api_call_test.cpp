#include "tern/agent/api_call.hpp"

#include <gtest/gtest.h>

namespace tern::agent {
namespace {

TEST(ApiCallTest, RequestRoundTripKeepsCallerAndBinaryBody) {
  ApiCall call;
  call.method = "POST";
  call.target = "/v1/jobs";
  call.body = std::string("{\"argv\":[\"x\"]}\0\xff", 16);
  call.caller.uid = 1000;
  call.caller.gid = 100;
  call.caller.pid = 42;
  call.caller.identified = true;
  auto decoded = DecodeApiRequest(EncodeApiRequest(7, call));
  ASSERT_TRUE(decoded) << decoded.error().message;
  EXPECT_EQ(decoded->first, 7u);
  EXPECT_EQ(decoded->second.method, "POST");
  EXPECT_EQ(decoded->second.body, call.body);
  EXPECT_EQ(decoded->second.caller.uid, 1000u);
  EXPECT_EQ(decoded->second.caller.gid, 100u);
  EXPECT_TRUE(decoded->second.caller.identified);
  EXPECT_TRUE(decoded->second.forwarded);
}

TEST(ApiCallTest, ResponseRoundTripKeepsHeaders) {
  ApiResult result;
  result.status = 404;
  result.content_type = "application/octet-stream";
  result.headers = {{"X-Tern-Next-Offset", "12"}};
  result.body = "abc";
  auto decoded = DecodeApiResponse(EncodeApiResponse(9, result));
  ASSERT_TRUE(decoded) << decoded.error().message;
  EXPECT_EQ(decoded->second.status, 404u);
  EXPECT_EQ(decoded->second.Header("X-Tern-Next-Offset"), "12");
  EXPECT_EQ(decoded->second.body, "abc");
}

TEST(ApiCallTest, MalformedFramesAreErrorsNotCrashes) {
  EXPECT_FALSE(DecodeApiRequest(""));
  EXPECT_FALSE(DecodeApiRequest(std::string("\0\0\0\xff{}", 6)));
  EXPECT_FALSE(DecodeApiRequest(std::string("\0\0\0\x02[]", 6)));
  EXPECT_FALSE(DecodeApiRequest(std::string("\0\0\0\x02{}", 6)));  // fields missing
  EXPECT_FALSE(DecodeApiResponse(std::string("\0\0\0\x03{x}", 7)));
}

// A peer's header with its JSON length prefix, as the frame carries it.
std::string PeerFrame(const std::string& header) {
  const auto n = static_cast<std::uint32_t>(header.size());
  std::string out{static_cast<char>(n >> 24), static_cast<char>(n >> 16), static_cast<char>(n >> 8),
                  static_cast<char>(n)};
  return out + header;
}

// A number that is not an integer the field holds was cast as it came: 1e300 as a uid is
// undefined behaviour (UBSan, fuzzing), 0.9 became uid 0 and -1 the largest uid.
TEST(ApiCallTest, CallerIdsMustBeIntegersInRange) {
  const std::string tail = R"(,"gid":100,"id":1,"method":"GET","target":"/v1/info"})";
  ASSERT_TRUE(DecodeApiRequest(PeerFrame(R"({"uid":1000)" + tail)));
  for (const char* uid : {"1e300", "0.9", "-1", "4294967296", "\"0\""}) {
    EXPECT_FALSE(DecodeApiRequest(PeerFrame(std::string(R"({"uid":)") + uid + tail))) << uid;
  }
  EXPECT_FALSE(DecodeApiRequest(PeerFrame(R"({"uid":1,"pid":1e300)" + tail)));
  EXPECT_FALSE(DecodeApiResponse(PeerFrame(R"({"id":1,"status":1e300})")));
  EXPECT_FALSE(DecodeApiResponse(PeerFrame(R"({"id":-1,"status":200})")));
}

TEST(ApiCallTest, ErrorMessageOfReadsTheErrorField) {
  EXPECT_EQ(ErrorMessageOf(ErrorResult(404, "no job 'x'")), "no job 'x'");
}

}  // namespace
}  // namespace tern::agent
