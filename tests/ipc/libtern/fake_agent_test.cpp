// The fake agent itself: it must behave as the agent does where libtern's tests rely on it.
#include "fake_agent.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <string>
#include <tern/ipc/frame.hpp>
#include <tern/ipc/job_wire.hpp>
#include <tern/unique_fd.hpp>
#include <thread>

namespace tern::testing {
namespace {

// A job that writes requests and reads none of their answers (its reading thread is busy, or
// waits for a lock its writing thread holds) must not stop the agent reading its requests: the
// agent queues what the job's socket does not take. A fake that blocked in sendmsg instead
// hung StreamFixture (the job's writer blocked on a full socket, its reader waiting to write).
TEST(FakeAgent, KeepsReadingRequestsWhileTheJobReadsNoAnswers) {
  FakeAgent agent;
  UniqueFd job(agent.TakeJobFd());
  ASSERT_EQ(::fcntl(job.get(), F_SETFL, ::fcntl(job.get(), F_GETFL) | O_NONBLOCK), 0);
  // Far more answers than the job's socket buffer holds (each is a few dozen bytes).
  constexpr int kRequests = 40000;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  std::string pending;
  int written = 0;
  while (written < kRequests || !pending.empty()) {
    if (pending.empty()) {
      pending = ipc::EncodeFrame(ipc::FrameType::kIpcRequest,
                                 ipc::EncodeJobRequest(static_cast<std::uint32_t>(written + 1),
                                                       ipc::JobOp::kRightInfo, {}));
      ++written;
    }
    const ssize_t n = ::write(job.get(), pending.data(), pending.size());
    if (n > 0) {
      pending.erase(0, static_cast<std::size_t>(n));
      continue;
    }
    ASSERT_TRUE(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) << "write: errno " << errno;
    ASSERT_LT(std::chrono::steady_clock::now(), deadline)
        << "the fake agent stopped reading after " << agent.requests_with_op(ipc::JobOp::kRightInfo)
        << " of " << written << " requests: it blocks while the job does not read its answers";
    pollfd p{job.get(), POLLOUT, 0};
    ::poll(&p, 1, 10);
  }
  while (agent.requests_with_op(ipc::JobOp::kRightInfo) < kRequests) {
    ASSERT_LT(std::chrono::steady_clock::now(), deadline)
        << "the fake agent read " << agent.requests_with_op(ipc::JobOp::kRightInfo) << " of "
        << kRequests << " requests";
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

}  // namespace
}  // namespace tern::testing
