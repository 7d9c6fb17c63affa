// Workers: a fixed set of threads that run one job split in parts, for the phases of a tern-sim
// step whose nodes are independent (delivering gossip, gossip ticks, the jobs' progress, the
// placements and decisions). Run(job) calls job(part) for every part in [0, size()) — part 0 on
// the calling thread — and returns when all are done.
//
// RunChunks(chunks, job) calls job(part, chunk) once for every chunk in [0, chunks), each on
// whichever thread claims it first (`part` says which: a thread's own buffers), so that chunks of
// uneven cost keep every thread busy.
//
// Contract: a job must not call Run. With size() 1 no thread is started and Run is a plain call.
//
// Thread-safety: Run is called from one thread at a time (the simulation's).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace tern::sim {

class Workers {
 public:
  explicit Workers(unsigned size) : size_(size == 0 ? 1 : size) {
    for (unsigned part = 1; part < size_; ++part) {
      threads_.emplace_back([this, part](std::stop_token stop) { Loop(stop, part); });
    }
  }
  ~Workers() {
    {
      std::lock_guard lock(mutex_);
      for (auto& thread : threads_) thread.request_stop();
    }
    wake_.notify_all();
  }
  Workers(const Workers&) = delete;
  Workers& operator=(const Workers&) = delete;

  unsigned size() const { return size_; }

  void Run(const std::function<void(unsigned part)>& job) {
    if (size_ == 1) {
      job(0);
      return;
    }
    {
      std::lock_guard lock(mutex_);
      job_ = &job;
      pending_ = size_ - 1;
      ++generation_;
    }
    wake_.notify_all();
    job(0);
    std::unique_lock lock(mutex_);
    done_.wait(lock, [&] { return pending_ == 0; });
    job_ = nullptr;
  }

  template <typename Job>
  void RunChunks(std::size_t chunks, Job&& job) {
    std::atomic<std::size_t> next{0};
    Run([&](unsigned part) {
      for (auto chunk = next.fetch_add(1, std::memory_order_relaxed); chunk < chunks;
           chunk = next.fetch_add(1, std::memory_order_relaxed)) {
        job(part, chunk);
      }
    });
  }

 private:
  void Loop(std::stop_token stop, unsigned part) {
    std::uint64_t seen = 0;
    for (;;) {
      const std::function<void(unsigned)>* job = nullptr;
      {
        std::unique_lock lock(mutex_);
        wake_.wait(lock, [&] { return stop.stop_requested() || generation_ != seen; });
        if (stop.stop_requested()) return;
        seen = generation_;
        job = job_;
      }
      (*job)(part);
      std::lock_guard lock(mutex_);
      if (--pending_ == 0) done_.notify_one();
    }
  }

  unsigned size_;
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  const std::function<void(unsigned)>* job_ = nullptr;
  std::uint64_t generation_ = 0;
  unsigned pending_ = 0;
  std::vector<std::jthread> threads_;  // last: joined before the members they use go
};

}  // namespace tern::sim
