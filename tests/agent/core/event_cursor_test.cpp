#include "tern/agent/event_cursor.hpp"

#include <gtest/gtest.h>

namespace tern::agent {
namespace {

TEST(EventCursorTest, RoundTripsWhatFormatMakes) {
  EventCursor cursor;
  cursor.seq["node2"] = 7;
  cursor.seq["node1"] = 42;
  const std::string text = FormatEventCursor(cursor);
  EXPECT_EQ(text, "node1:42,node2:7") << "names sorted, so equal cursors are equal text";
  auto parsed = ParseEventCursor(text);
  ASSERT_TRUE(parsed) << parsed.error().message;
  EXPECT_EQ(parsed->seq, cursor.seq);
  EXPECT_EQ(parsed->Of("node1"), 42u);
  EXPECT_EQ(parsed->Of("node9"), 0u) << "a node the reader never saw: from its first event";
}

TEST(EventCursorTest, EmptyTextIsTheEmptyCursor) {
  auto parsed = ParseEventCursor("");
  ASSERT_TRUE(parsed);
  EXPECT_TRUE(parsed->seq.empty());
}

TEST(EventCursorTest, RefusesMalformedTextWithAReason) {
  for (const char* bad : {"node1", "node1:", ":5", "node1:x", "node1:5,", "node1:-3", "a:1,b",
                          "node1:99999999999999999999999"}) {
    auto parsed = ParseEventCursor(bad);
    EXPECT_FALSE(parsed) << bad;
    if (!parsed) {
      EXPECT_NE(parsed.error().message.find("event cursor"), std::string::npos);
    }
  }
}

}  // namespace
}  // namespace tern::agent
