#include "tern/agent/target.hpp"

#include <gtest/gtest.h>

namespace tern::agent {
namespace {

TEST(TargetTest, SplitsPathAndDecodesQuery) {
  Target target = ParseTarget("/v1/jobs/node1.4/logs?stream=stderr&offset=10&x=a%20b+c");
  ASSERT_EQ(target.segments.size(), 4u);
  EXPECT_EQ(target.segments[2], "node1.4");
  EXPECT_EQ(target.Get("stream", ""), "stderr");
  EXPECT_EQ(target.Get("offset", ""), "10");
  EXPECT_EQ(target.Get("x", ""), "a b c");
  EXPECT_EQ(target.Get("missing", "dflt"), "dflt");
  EXPECT_EQ(target.raw_query, "stream=stderr&offset=10&x=a%20b+c");
}

TEST(TargetTest, ToleratesOddInput) {
  EXPECT_TRUE(ParseTarget("").segments.empty());
  EXPECT_EQ(ParseTarget("//v1//info/").segments.size(), 2u);
  EXPECT_EQ(PercentDecode("100%"), "100%");
  EXPECT_EQ(PercentDecode("%zz"), "%zz");
  EXPECT_EQ(ParseTarget("/v1/jobs?local").query.count("local"), 1u);
}

// Segments are decoded after splitting: a decoded '/', "." or ".." would let an id in the path
// name a file outside the state directory (issue 14, item 7).
TEST(TargetTest, RefusesSegmentsThatDecodeToPathTricks) {
  for (const char* bad :
       {"/v1/migrations/..%2F..%2Ftmp%2Fx", "/v1/migrations/%2E%2E", "/v1/jobs/%2e/logs",
        "/v1/jobs/..", "/v1/jobs/a%00b/logs", "/v1/jobs/a%2fb"}) {
    const Target target = ParseTarget(bad);
    EXPECT_FALSE(target.valid()) << bad;
    EXPECT_NE(target.error.find("malformed"), std::string::npos) << target.error;
  }
  EXPECT_TRUE(ParseTarget("/v1/jobs/node1.4/logs?stream=..%2F..").valid())
      << "the query is not a path";
  EXPECT_TRUE(ParseTarget("/v1/migrations/node1.4-0badc0de").valid());
  EXPECT_TRUE(ParseTarget("/v1/jobs/a.b.c%20d").valid());
}

}  // namespace
}  // namespace tern::agent
