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

}  // namespace
}  // namespace tern::agent
