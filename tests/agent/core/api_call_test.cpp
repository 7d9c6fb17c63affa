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

TEST(ApiCallTest, ErrorMessageOfReadsTheErrorField) {
  EXPECT_EQ(ErrorMessageOf(ErrorResult(404, "no job 'x'")), "no job 'x'");
}

}  // namespace
}  // namespace tern::agent
