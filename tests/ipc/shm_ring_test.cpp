#include <gtest/gtest.h>
#include <pthread.h>
#include <sched.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <random>
#include <string>
#include <tern/ipc/shm_ring.hpp>
#include <tern/unique_fd.hpp>
#include <thread>
#include <vector>

namespace tern::ipc {
namespace {

using namespace std::chrono_literals;

// One memfd, mapped once per side, as two jobs map it: different addresses, the same pages.
class SharedBlock {
 public:
  explicit SharedBlock(std::size_t bytes)
      : bytes_(bytes), fd_(::memfd_create("ring", MFD_CLOEXEC)) {
    if (!fd_.valid() || ::ftruncate(fd_.get(), static_cast<off_t>(bytes)) != 0) return;
    for (auto*& map : maps_) {
      void* at = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd_.get(), 0);
      map = at == MAP_FAILED ? nullptr : static_cast<std::byte*>(at);
    }
  }
  ~SharedBlock() {
    for (auto* map : maps_) {
      if (map) ::munmap(map, bytes_);
    }
  }
  SharedBlock(const SharedBlock&) = delete;
  SharedBlock& operator=(const SharedBlock&) = delete;
  std::span<std::byte> side(int i) { return {maps_[i], maps_[i] ? bytes_ : 0}; }

 private:
  std::size_t bytes_;
  UniqueFd fd_;
  std::byte* maps_[3] = {};
};

std::vector<std::byte> Pattern(std::size_t n, unsigned seed) {
  std::vector<std::byte> out(n);
  for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<std::byte>((i * 31 + seed) & 0xff);
  return out;
}

std::vector<std::byte> ReadAll(ShmRing& ring) {
  std::vector<std::byte> out;
  while (ring.Available() > 0) {
    const auto run = ring.Readable();
    out.insert(out.end(), run.begin(), run.end());
    ring.Release(run.size());
  }
  return out;
}

TEST(ShmRing, BytesComeOutInOrderAcrossTheWrap) {
  SharedBlock block(ShmRing::BytesFor(4096));
  auto producer = ShmRing::Create(block.side(0), 4096);
  auto consumer = ShmRing::Attach(block.side(1));
  ASSERT_TRUE(producer && consumer);
  const auto first = Pattern(3000, 1);
  ASSERT_EQ(producer->Write(first), 3000u);
  producer->Publish();
  EXPECT_EQ(ReadAll(*consumer), first);
  // 2000 more: 1096 fit before the end of the data, 904 wrap to its start.
  const auto second = Pattern(2000, 2);
  ASSERT_EQ(producer->Write(second), 2000u);
  producer->Publish();
  EXPECT_EQ(consumer->Readable().size(), 1096u) << "a run stops at the end of the data";
  EXPECT_EQ(consumer->Available(), 2000u);
  EXPECT_EQ(ReadAll(*consumer), second);
}

// The consumer learns which CPU the producer last published from (a writer sizes its frames by
// it): nothing before the first Publish, as in a block an older libtern made; then the CPU the
// publishing thread ran on, followed as that thread moves.
TEST(ShmRing, APublishSaysWhichCpuTheProducerRanOn) {
  SharedBlock block(ShmRing::BytesFor(4096));
  auto producer = ShmRing::Create(block.side(0), 4096);
  auto consumer = ShmRing::Attach(block.side(1));
  ASSERT_TRUE(producer && consumer);
  EXPECT_FALSE(consumer->producer_cpu()) << "nothing published yet";

  cpu_set_t allowed;
  ASSERT_EQ(::sched_getaffinity(0, sizeof allowed, &allowed), 0);
  std::vector<unsigned> cpus;
  for (unsigned cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (CPU_ISSET(cpu, &allowed)) cpus.push_back(cpu);
  }
  ASSERT_FALSE(cpus.empty());
  if (cpus.size() > 2) cpus.resize(2);
  // On a thread of its own, pinned to each CPU in turn, so the test's own affinity stays.
  std::thread publisher([&] {
    for (const unsigned cpu : cpus) {
      cpu_set_t one;
      CPU_ZERO(&one);
      CPU_SET(cpu, &one);
      ASSERT_EQ(::pthread_setaffinity_np(::pthread_self(), sizeof one, &one), 0);
      ASSERT_EQ(producer->Write(Pattern(10, cpu)), 10u);
      producer->Publish();
      EXPECT_EQ(consumer->producer_cpu(), cpu);
      ReadAll(*consumer);
    }
  });
  publisher.join();
}

// A consumer may keep bytes it read in the ring (Take: views handed out in place): they stay
// held until released, oldest first, and Readable goes on past them.
TEST(ShmRing, TakenBytesStayHeldUntilReleased) {
  SharedBlock block(ShmRing::BytesFor(4096));
  auto producer = ShmRing::Create(block.side(0), 4096);
  auto consumer = ShmRing::Attach(block.side(1));
  ASSERT_TRUE(producer && consumer);
  const auto bytes = Pattern(3000, 4);
  ASSERT_EQ(producer->Write(bytes), 3000u);
  producer->Publish();
  consumer->Take(1000);
  EXPECT_EQ(consumer->Available(), 2000u) << "past what it took";
  EXPECT_EQ(consumer->Readable()[0], bytes[1000]);
  EXPECT_EQ(consumer->taken_at(), 1000u);
  EXPECT_EQ(producer->Space(), 4096u - 3000u) << "taken is not given back";
  consumer->Take(2000);
  EXPECT_EQ(consumer->Available(), 0u);
  consumer->Release(1000);
  EXPECT_EQ(producer->Space(), 4096u - 2000u);
  EXPECT_EQ(consumer->released_at(), 1000u);
  consumer->Release(5000);
  EXPECT_EQ(producer->Space(), 4096u) << "at most what was published";
}

// Rewind: a producer far enough into the ring, with nothing held by the consumer, starts again
// at its beginning; the consumer jumps over the rest and gives it back with its next Release.
TEST(ShmRing, ARewindStartsAgainAtTheRingsBeginningAndTheConsumerFollowsIt) {
  SharedBlock block(ShmRing::BytesFor(8192));
  auto consumer = ShmRing::Create(block.side(0), 8192);
  auto producer = ShmRing::Attach(block.side(1));
  ASSERT_TRUE(producer && consumer);
  EXPECT_FALSE(producer->Rewind(1000)) << "at the ring's start already";
  const auto first = Pattern(3000, 5);
  ASSERT_EQ(producer->Write(first), 3000u);
  EXPECT_FALSE(producer->Rewind(1000)) << "unpublished bytes";
  producer->Publish();
  EXPECT_FALSE(producer->Rewind(1000)) << "the consumer has not released them";
  EXPECT_EQ(ReadAll(*consumer), first);
  EXPECT_FALSE(producer->Rewind(4000)) << "not that far into the ring";
  ASSERT_TRUE(producer->Rewind(1000));
  EXPECT_EQ(producer->Space(), 3000u) << "the skip is the consumer's until it gives it back";
  const auto second = Pattern(2500, 6);
  ASSERT_EQ(producer->Write(second), 2500u);
  EXPECT_EQ(consumer->Available(), 0u) << "nothing visible before Publish, the skip neither";
  producer->Publish();
  EXPECT_EQ(consumer->Available(), 2500u);
  const auto run = consumer->Readable();
  ASSERT_EQ(run.size(), 2500u) << "the bytes at the ring's start, in one run";
  EXPECT_TRUE(std::equal(run.begin(), run.end(), second.begin()));
  EXPECT_EQ(run.data(), block.side(0).data() + ShmRing::kHeaderBytes);
  consumer->Take(2500);
  consumer->Release(consumer->taken_at() - consumer->released_at());
  EXPECT_EQ(producer->Space(), 8192u) << "the skip and the bytes given back";
  // An older consumer (a block whose header does not say it follows skips) is never skipped.
  std::memset(block.side(0).data() + 20, 0, 4);  // `features`, after magic, capacity, revoked
  const auto third = Pattern(4000, 7);
  ASSERT_EQ(producer->Write(third), 4000u);
  producer->Publish();
  EXPECT_EQ(ReadAll(*consumer), third);
  EXPECT_FALSE(producer->Rewind(1000));
}

TEST(ShmRing, NothingIsVisibleBeforePublishAndAFullRingTakesNoMore) {
  SharedBlock block(ShmRing::BytesFor(4096));
  auto producer = ShmRing::Create(block.side(0), 4096);
  auto consumer = ShmRing::Attach(block.side(1));
  ASSERT_TRUE(producer && consumer);
  const auto bytes = Pattern(5000, 3);
  EXPECT_EQ(producer->Write(bytes), 4096u) << "what fits, no more";
  EXPECT_EQ(producer->Space(), 0u);
  EXPECT_EQ(producer->Write(bytes), 0u);
  EXPECT_EQ(consumer->Available(), 0u) << "written is not published";
  EXPECT_FALSE(consumer->WaitForData(1ms));
  EXPECT_FALSE(producer->Publish()) << "the consumer is not asleep: no system call";
  EXPECT_TRUE(consumer->WaitForData(0ms));
  EXPECT_EQ(consumer->Available(), 4096u);
  consumer->Release(100);
  EXPECT_EQ(producer->Space(), 100u);
  EXPECT_FALSE(producer->WaitForSpace(200, 1ms));
  EXPECT_TRUE(producer->WaitForSpace(100, 0ms));
}

TEST(ShmRing, ARevokedRingWakesBothSidesAndCarriesNothingMore) {
  SharedBlock block(ShmRing::BytesFor(4096));
  auto producer = ShmRing::Create(block.side(0), 4096);
  auto consumer = ShmRing::Attach(block.side(1));
  auto agent = ShmRing::Attach(block.side(2));
  ASSERT_TRUE(producer && consumer && agent);
  // A second ring fills the producer's side: it waits for space while the consumer waits for
  // data on the first.
  SharedBlock full_block(ShmRing::BytesFor(4096));
  auto full = ShmRing::Create(full_block.side(0), 4096);
  auto full_agent = ShmRing::Attach(full_block.side(2));
  ASSERT_TRUE(full && full_agent);
  ASSERT_EQ(full->Write(Pattern(4096, 4)), 4096u);
  full->Publish();
  bool got_data = true, got_space = true;
  std::chrono::steady_clock::duration reader_waited{}, writer_waited{};
  std::thread reader([&] {
    const auto start = std::chrono::steady_clock::now();
    got_data = consumer->WaitForData(10s);
    reader_waited = std::chrono::steady_clock::now() - start;
  });
  std::thread writer([&] {
    const auto start = std::chrono::steady_clock::now();
    got_space = full->WaitForSpace(1, 10s);
    writer_waited = std::chrono::steady_clock::now() - start;
  });
  std::this_thread::sleep_for(50ms);  // both asleep (if not, they still see the flag)
  EXPECT_FALSE(producer->Publish()) << "nothing written: no wake-up";
  agent->Revoke();
  full_agent->Revoke();
  reader.join();
  writer.join();
  EXPECT_FALSE(got_data);
  EXPECT_FALSE(got_space);
  EXPECT_LT(reader_waited, 5s) << "the revocation woke the reader";
  EXPECT_LT(writer_waited, 5s) << "the revocation woke the writer";
  EXPECT_TRUE(consumer->Revoked());
  EXPECT_EQ(producer->Write(Pattern(10, 5)), 0u);
  EXPECT_TRUE(full->Revoked());
  EXPECT_EQ(full_agent->Available(), 0u) << "what was in flight is gone with it";
  EXPECT_TRUE(full_agent->Readable().empty());
}

// A consumer that can do nothing with less than some mark (a stream's writer waiting for
// enough credits) sleeps for it: a Publish of a lower mark neither rings nor wakes it, the
// first of that mark does, once; a consumer asleep on the futex is woken by Publish itself,
// which then asks for no bell.
TEST(ShmRing, AConsumerAsleepForAMarkIsWokenOnlyByAPublishOfIt) {
  SharedBlock block(ShmRing::BytesFor(4096));
  auto producer = ShmRing::Create(block.side(0), 4096);
  auto consumer = ShmRing::Attach(block.side(1));
  ASSERT_TRUE(producer && consumer);
  // Armed for poll().
  ASSERT_TRUE(consumer->ArmForData(100));
  ASSERT_EQ(producer->Write(Pattern(10, 1)), 10u);
  EXPECT_FALSE(producer->Publish(99)) << "below its mark: it sleeps on";
  ASSERT_EQ(producer->Write(Pattern(10, 2)), 10u);
  EXPECT_TRUE(producer->Publish(100)) << "its mark: ring it";
  ASSERT_EQ(producer->Write(Pattern(10, 3)), 10u);
  EXPECT_FALSE(producer->Publish(500)) << "rung once";
  EXPECT_EQ(ReadAll(*consumer).size(), 30u) << "every byte there, whatever its mark";

  // Asleep on the futex.
  std::atomic<bool> done{false};
  bool got = false;
  std::chrono::steady_clock::duration waited{};
  std::thread sleeper([&] {
    const auto start = std::chrono::steady_clock::now();
    got = consumer->WaitForData(10s, 200);
    waited = std::chrono::steady_clock::now() - start;
    done = true;
  });
  std::this_thread::sleep_for(50ms);
  ASSERT_EQ(producer->Write(Pattern(10, 4)), 10u);
  EXPECT_FALSE(producer->Publish(150)) << "below its mark";
  std::this_thread::sleep_for(100ms);
  EXPECT_FALSE(done) << "a Publish below its mark woke it";
  ASSERT_EQ(producer->Write(Pattern(10, 5)), 10u);
  EXPECT_FALSE(producer->Publish(200)) << "woken by the futex: no bell";
  sleeper.join();
  EXPECT_TRUE(got);
  EXPECT_LT(waited, 5s);
  EXPECT_EQ(ReadAll(*consumer).size(), 20u);
}

// A side that sleeps in poll() (a PortReader also waits on its agent) arms instead of waiting:
// the other side's Publish or Release then says it must ring that side's doorbell, once.
TEST(ShmRing, ASideArmedToSleepElsewhereIsRungOnceAndOnlyThen) {
  SharedBlock block(ShmRing::BytesFor(4096));
  auto producer = ShmRing::Create(block.side(0), 4096);
  auto consumer = ShmRing::Attach(block.side(1));
  ASSERT_TRUE(producer && consumer);
  ASSERT_TRUE(consumer->ArmForData()) << "nothing to read: it may sleep";
  ASSERT_EQ(producer->Write(Pattern(100, 6)), 100u);
  EXPECT_TRUE(producer->Publish()) << "ring the consumer";
  ASSERT_EQ(producer->Write(Pattern(100, 7)), 100u);
  EXPECT_FALSE(producer->Publish()) << "rung once: it is awake now";
  EXPECT_FALSE(consumer->ArmForData()) << "there is data: do not sleep";
  ASSERT_EQ(producer->Write(Pattern(4096 - 200, 8)), 4096u - 200);
  producer->Publish();
  EXPECT_FALSE(producer->ArmForSpace(0)) << "nothing asked for";
  ASSERT_TRUE(producer->ArmForSpace(1)) << "the ring is full: it may sleep";
  EXPECT_TRUE(consumer->Release(10)) << "ring the producer";
  EXPECT_FALSE(consumer->Release(10)) << "rung once";
  EXPECT_FALSE(producer->ArmForSpace(20)) << "20 bytes are free";
  ASSERT_TRUE(producer->ArmForSpace(21));
  producer->DisarmForSpace();  // woken by something else
  EXPECT_FALSE(consumer->Release(1)) << "a disarmed side is not rung";
  ReadAll(*consumer);
  ASSERT_TRUE(consumer->ArmForData());
  consumer->Revoke();
  EXPECT_FALSE(consumer->ArmForData()) << "revoked: nothing to sleep for";
  EXPECT_FALSE(producer->ArmForSpace(1));
}

TEST(ShmRing, AttachRefusesAHeaderThatDoesNotFitItsBlock) {
  SharedBlock block(ShmRing::BytesFor(8192));
  EXPECT_FALSE(ShmRing::Attach(block.side(0))) << "no header written";
  EXPECT_FALSE(ShmRing::Create(block.side(0), 3000)) << "not a power of two";
  EXPECT_FALSE(ShmRing::Create(block.side(0), 16384)) << "larger than the block";
  ASSERT_TRUE(ShmRing::Create(block.side(0), 8192));
  EXPECT_TRUE(ShmRing::Attach(block.side(1)));
  EXPECT_FALSE(ShmRing::Attach(block.side(1).first(ShmRing::BytesFor(4096))))
      << "a capacity past the end of the mapping";
}

// The two sides on two threads, each with its own mapping, for a few seconds of records of
// every size up to twice the ring: each record arrives whole, once and in order. Every wait
// has a deadline, so a missed wake-up fails the test instead of hanging it.
TEST(ShmRing, TwoThreadsHammeringLoseNothing) {
  constexpr std::size_t kCapacity = 16384;
  constexpr std::uint64_t kRecords = 200'000;
  SharedBlock block(ShmRing::BytesFor(kCapacity));
  auto producer = ShmRing::Create(block.side(0), kCapacity);
  auto consumer = ShmRing::Attach(block.side(1));
  ASSERT_TRUE(producer && consumer);
  std::string producer_error;
  std::thread writer([&] {
    std::mt19937 random(7);
    std::vector<std::byte> record;
    for (std::uint64_t seq = 0; seq < kRecords; ++seq) {
      // Mostly small, now and then past the capacity (written in pieces as space frees).
      const std::uint32_t size =
          random() % 64 == 0 ? 1 + random() % (2 * kCapacity) : 1 + random() % 200;
      record.resize(12 + size);
      std::memcpy(record.data(), &size, 4);
      std::memcpy(record.data() + 4, &seq, 8);
      for (std::uint32_t i = 0; i < size; ++i) {
        record[12 + i] = static_cast<std::byte>((seq + i) & 0xff);
      }
      std::span<const std::byte> left(record);
      while (!left.empty()) {
        const std::size_t n = producer->Write(left);
        left = left.subspan(n);
        if (!left.empty()) {
          producer->Publish();
          if (!producer->WaitForSpace(std::min<std::size_t>(left.size(), 4096), 5s)) {
            producer_error = "no space within 5 s at record " + std::to_string(seq);
            return;
          }
        }
      }
      if (seq % 16 == 0) producer->Publish();  // batches: the reader is woken per batch
    }
    producer->Publish();
  });
  std::vector<std::byte> pending;
  std::uint64_t next = 0;
  std::string consumer_error;
  while (next < kRecords && consumer_error.empty()) {
    if (!consumer->WaitForData(5s)) {
      consumer_error = "no data within 5 s at record " + std::to_string(next);
      break;
    }
    const auto run = consumer->Readable();
    pending.insert(pending.end(), run.begin(), run.end());
    consumer->Release(run.size());
    std::size_t at = 0;
    while (pending.size() - at >= 12) {
      std::uint32_t size = 0;
      std::uint64_t seq = 0;
      std::memcpy(&size, pending.data() + at, 4);
      std::memcpy(&seq, pending.data() + at + 4, 8);
      if (pending.size() - at < 12 + size) break;
      if (seq != next) {
        consumer_error =
            "record " + std::to_string(seq) + " where " + std::to_string(next) + " was due";
        break;
      }
      for (std::uint32_t i = 0; i < size; ++i) {
        if (pending[at + 12 + i] != static_cast<std::byte>((seq + i) & 0xff)) {
          consumer_error =
              "record " + std::to_string(seq) + " damaged at byte " + std::to_string(i);
          break;
        }
      }
      at += 12 + size;
      ++next;
    }
    pending.erase(pending.begin(), pending.begin() + static_cast<std::ptrdiff_t>(at));
  }
  if (!consumer_error.empty()) consumer->Revoke();  // frees a producer waiting for space
  writer.join();
  EXPECT_EQ(producer_error, "");
  EXPECT_EQ(consumer_error, "");
  EXPECT_EQ(next, kRecords);
  EXPECT_TRUE(pending.empty());
}

}  // namespace
}  // namespace tern::ipc
