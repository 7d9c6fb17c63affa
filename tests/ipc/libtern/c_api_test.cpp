// The C API over a fake agent. It sets the process's channel (tern_use_fd), so it runs in a
// child process of its own and reports the first failed step as its exit code.
#include <gtest/gtest.h>
#include <tern/ipc.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "fake_agent.hpp"

namespace {

int Reverse(void* context, const void* request, size_t size, void** reply, size_t* reply_size) {
  ++*static_cast<int*>(context);
  std::string text(static_cast<const char*>(request), size);
  if (text == "fail") return 1;
  text.assign(text.rbegin(), text.rend());
  *reply = std::malloc(text.size());
  std::memcpy(*reply, text.data(), text.size());
  *reply_size = text.size();
  return 0;
}

int RunCApi() {
  tern::testing::FakeAgent agent;
  if (tern_use_fd(agent.TakeJobFd()) != TERN_OK) return 2;
  uint32_t port = 0;
  uint32_t send = 0;
  if (tern_port_allocate(0, &port) != TERN_OK) return 3;
  if (tern_make_send(port, &send) != TERN_OK) return 4;
  if (tern_send_bytes(send, 9, "hi", 2, TERN_FULL_FAIL, 0) != TERN_OK) return 5;
  tern_message* message = nullptr;
  if (tern_receive(port, 1000, &message) != TERN_OK) return 6;
  tern_item item{};
  if (tern_message_id(message) != 9 || tern_message_item_count(message) != 1) return 7;
  if (tern_message_item(message, 0, &item) != TERN_OK || item.kind != TERN_ITEM_BYTES ||
      std::string(static_cast<const char*>(item.data), item.size) != "hi") {
    return 8;
  }
  tern_message_free(message);
  if (tern_receive(port, 10, &message) != TERN_TIMED_OUT) return 9;
  if (std::string(tern_strerror(TERN_TIMED_OUT)) != "timed_out") return 10;
  if (std::string(tern_last_error()) != "receive timed out") return 11;
  uint32_t missing = 0;
  if (tern_name_lookup("missing", &missing) != TERN_NOT_FOUND) return 12;

  uint32_t region = 0;
  tern_region* a = nullptr;
  tern_region* b = nullptr;
  if (tern_region_create(4096, &region) != TERN_OK) return 13;
  if (tern_region_map(region, &a) != TERN_OK || tern_region_map(region, &b) != TERN_OK) return 14;
  std::memcpy(tern_region_data(a), "page", 4);
  if (std::memcmp(tern_region_data(b), "page", 4) != 0 || tern_region_size(b) != 4096) return 15;
  tern_region_unmap(a);
  tern_region_unmap(b);

  int calls = 0;
  tern_rpc_server* server = nullptr;
  if (tern_rpc_server_start(port, Reverse, &calls, 2, TERN_RPC_ACK_EXPLICIT, &server) != TERN_OK) {
    return 16;
  }
  void* reply = nullptr;
  size_t reply_size = 0;
  if (tern_call(send, "abc", 3, 2000, &reply, &reply_size) != TERN_OK) return 17;
  if (std::string(static_cast<char*>(reply), reply_size) != "cba") return 18;
  tern_free(reply);
  if (tern_call(send, "fail", 4, 2000, &reply, &reply_size) != TERN_BAD_REQUEST) return 19;
  tern_rpc_server_stop(server);
  if (calls != 2) return 20;

  // A stream: 3000 messages through a writer, read back in order through a reader.
  uint32_t inbox = 0, inbox_send = 0;
  if (tern_port_allocate(5000, &inbox) != TERN_OK) return 21;
  if (tern_make_send(inbox, &inbox_send) != TERN_OK) return 22;
  tern_writer* writer = nullptr;
  if (tern_writer_open(inbox_send, &writer) != TERN_OK) return 23;
  for (uint32_t i = 0; i < 3000; ++i) {
    const std::string text = "m" + std::to_string(i);
    if (tern_writer_write(writer, i, text.data(), text.size()) != TERN_OK) return 24;
  }
  if (tern_writer_flush(writer) != TERN_OK || tern_writer_accepted(writer) != 3000) return 25;
  if (tern_writer_close(writer) != TERN_OK) return 26;
  tern_reader* stream = nullptr;
  if (tern_reader_open(inbox, 128, &stream) != TERN_OK) return 27;
  for (uint32_t i = 0; i < 3000; ++i) {
    uint32_t id = 0, reply_name = 7;
    const void* data = nullptr;
    size_t size = 0;
    if (tern_reader_next(stream, 1000, &id, &data, &size, &reply_name) != TERN_OK) return 28;
    if (id != i || reply_name != 0) return 29;
    if (std::string(static_cast<const char*>(data), size) != "m" + std::to_string(i)) return 30;
  }
  uint32_t id = 0;
  const void* data = nullptr;
  size_t size = 0;
  if (tern_reader_next(stream, 0, &id, &data, &size, nullptr) != TERN_TIMED_OUT) return 31;
  tern_reader_close(stream);
  // A writer to a name that is no right: the stream ends with the refusal.
  if (tern_writer_open(4242, &writer) != TERN_OK) return 32;
  if (tern_writer_write(writer, 1, "x", 1) != TERN_OK) return 33;  // gathered, not yet sent
  if (tern_writer_close(writer) != TERN_INVALID_NAME) return 34;
  return 0;
}

TEST(CApi, WorksOverAChannel) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(std::exit(RunCApi()), ::testing::ExitedWithCode(0), "");
}

TEST(CApi, FailsClearlyOutsideTern) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        ::unsetenv("TERN_IPC_FD");
        uint32_t port = 0;
        const int status = tern_port_allocate(0, &port);
        std::exit(status == TERN_UNAVAILABLE && std::string(tern_last_error()) ==
                                                    "not running under tern: TERN_IPC_FD is not set"
                      ? 0
                      : 1);
      },
      ::testing::ExitedWithCode(0), "");
}

}  // namespace
