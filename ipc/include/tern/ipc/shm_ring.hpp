// ShmRing: a single-producer, single-consumer byte ring in memory two processes share (a memfd
// both map), the transport a same-node direct stream uses instead of a socket
// (docs/ipc.md "Direct streams", "Shared memory on one node"). It moves bytes, nothing more:
// the stream's frames (DirectStream / DirectStreamAck, stream_wire.hpp) go in as they would go
// into a socket, one ring per direction.
//
// Layout of the shared block (BytesFor(capacity) bytes, `capacity` a power of two):
//   line 0   magic, capacity, `revoked`, `features`           (written once, then by Revoke)
//   line 1   `head`: bytes the producer has published, ever,   (the producer writes it)
//            and its last Rewind's skip, and the CPU it last published from (a hint)

//   line 2   `tail`: bytes the consumer has released, ever     (the consumer writes it)
//   line 3   `data` futex word, `reader_waiting`, `wake_at`    (the consumer sleeps here)
//   line 4   `space` futex word and `writer_waiting`           (the producer sleeps here)
//   then     `capacity` bytes of data, at offset kHeaderBytes
// Each line is 64 bytes, so the producer's and the consumer's stores never share one.
//
// Contract:
//  - One producer and one consumer, each in one thread at a time (they may be processes). The
//    producer calls Write, Publish and WaitForSpace; the consumer Readable, Release and
//    WaitForData. Revoke may be called by anyone (the agent, holding its own mapping), any time.
//  - Write copies into the ring as much as fits and returns how much; nothing is visible to the
//    consumer until Publish (so a frame written in several pieces, or many frames, wake it once:
//    the batching). Readable is the longest contiguous run the consumer may read; Release gives
//    bytes back; Take keeps bytes it read in the ring (views into it), past Readable, until it
//    releases them, oldest first. Bytes come out exactly as they went in, in order.
//  - Wake-ups: a side about to sleep sets its `waiting` word, then checks again, then waits on
//    its futex; the other side, after it published or released, wakes it only if that word is
//    set (both orders sequentially consistent, so a wake is never missed and a side that is
//    running costs the other no system call). A side that must sleep in poll() instead (a
//    PortReader also waits on its agent) arms (ArmForData / ArmForSpace: the same handshake
//    without the futex) and polls a doorbell; the other side rings it when Publish or Release
//    returns true, which they do once per sleep (docs/ipc.md "Shared memory on one node"),
//    without a futex wake for a side that armed (the `waiting` word says which way it sleeps;
//    one asleep on the futex is woken by Publish or Release themselves, which then return
//    false: no bell). A consumer may sleep for a mark (WaitForData / ArmForData): a Publish
//    of a lower mark then leaves it asleep, so that it is woken once, when it can go on.
//  - Revoke sets `revoked` and wakes both sides for good: from then on Write and Readable
//    report it (Revoked()) and give nothing, whatever was in flight. To a stream it is the
//    connection's end of file.
//  - Attach checks the header a creator wrote (magic, capacity matching the block): a peer that
//    wrote garbage can make the other side read garbage bytes, never read or write out of the
//    block (positions are masked, lengths bounded by the capacity).
//
// Thread-safety: see the contract; one ShmRing object per side, not shared between threads
// (the shared memory is what is shared).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>

namespace tern::ipc {

class ShmRing {
 public:
  static constexpr std::size_t kLine = 64;
  static constexpr std::size_t kHeaderBytes = 4096;  // the data starts on a page of its own
  static constexpr std::uint64_t kMagic = 0x7465726e52494e47;  // "ternRING"

  // The bytes a block must have for a ring of `capacity` bytes (a power of two, >= 4 KiB).
  static constexpr std::size_t BytesFor(std::size_t capacity) { return kHeaderBytes + capacity; }

  // Writes a fresh header into `block` (zeroed positions): the creator's side.
  static std::optional<ShmRing> Create(std::span<std::byte> block, std::size_t capacity);
  // A side over a block another process created; nullopt if its header does not fit the block.
  static std::optional<ShmRing> Attach(std::span<std::byte> block);

  std::size_t capacity() const { return capacity_; }

  // Producer.
  std::size_t Write(std::span<const std::byte> bytes);  // copies what fits; not yet visible
  // Makes the written bytes visible, and wakes a consumer asleep on the futex (WaitForData).
  // True if the consumer sleeps in poll() (ArmForData): the caller rings its doorbell, once.
  // `mark`: what the bytes bring the consumer, in the two sides' own terms (a stream's acks:
  // messages handed out); a consumer asleep for a higher mark is neither woken nor rung.
  bool Publish(std::uint64_t mark = UINT64_MAX);
  std::size_t Space() const;  // bytes Write would take now
  // Keeps the ring's used part small: when the producer is `from` bytes or more into the ring
  // and the consumer holds nothing (all published and released), the rest of the ring is
  // skipped and the next Write starts at its beginning; the consumer jumps over the skip
  // (Readable, Available) and gives it back with its next Release. A ring cycles through all
  // its lines otherwise, each store meeting a line long out of the cache. False (nothing done)
  // when it cannot, or when the consumer is an older one that does not follow skips.
  bool Rewind(std::size_t from);
  // Sleeps until at least `bytes` (at most the capacity) can be written, the ring is revoked,
  // or `timeout` passes. True if the space is there.
  bool WaitForSpace(std::size_t bytes, std::chrono::milliseconds timeout);
  // For a producer that sleeps elsewhere (in poll() on a doorbell the consumer rings when its
  // Release returns true): says it sleeps, then checks again. False (nothing said) if `bytes`
  // can be written already or the ring is revoked: do not sleep then.
  bool ArmForSpace(std::size_t bytes);

  // The CPU the producer last published from (Publish), as sched_getcpu() said then; nullopt
  // before its first Publish or when the producer is an older one that does not say. A hint,
  // stale as soon as read: whether the two sides run at once on two CPUs or take turns on one
  // (PortWriter sizes its frames by it: docs/ipc.md "Frames sized by where the reader runs").
  std::optional<unsigned> producer_cpu() const;

  // Consumer. Bytes it has read may stay in the ring, taken (Take: a reader that hands them
  // out in place), until it releases them; Readable and Available start past what it took.
  std::span<const std::byte> Readable() const;  // contiguous published bytes, maybe not all
  std::size_t Available() const;                // all published bytes not yet taken
  void Take(std::size_t bytes);                 // at most Available(); not yet given back
  // Positions since the ring's start: through what the consumer took (after a skip it met),
  // and through what it released.
  std::uint64_t taken_at() const { return taken_; }
  std::uint64_t released_at() const { return read_; }
  // Gives back the oldest `bytes` (taken or not; at most what was published and not released:
  // those not taken yet are taken too), and wakes a producer asleep on the futex
  // (WaitForSpace). True if the producer sleeps in poll() (ArmForSpace): ring it, once.
  bool Release(std::size_t bytes);
  // Sleeps until something is published (with `mark` or more: see Publish), the ring is
  // revoked, or `timeout` passes. True if there are bytes to read (maybe of a lower mark).
  bool WaitForData(std::chrono::milliseconds timeout, std::uint64_t mark = 0);
  // The same for a consumer that sleeps in poll(): rung when the producer's Publish returns
  // true, which it does only for a Publish of `mark` or more (a consumer that can do nothing
  // with less sleeps on: one wake-up, not one per Publish). False if there is data already or
  // the ring is revoked.
  bool ArmForData(std::uint64_t mark = 0);
  // Either side, awake for another reason: it no longer sleeps (the other side need not ring).
  void DisarmForData();
  void DisarmForSpace();

  // Either side, or the agent: the ring's end (see the contract).
  void Revoke();
  bool Revoked() const;

 private:
  struct Header;
  ShmRing(Header* header, std::byte* data, std::size_t capacity);

  Header* header_;
  std::byte* data_;
  std::size_t capacity_;
  std::uint64_t written_;  // the producer's head, ahead of the published one until Publish
  std::uint64_t read_;     // the consumer's tail
  // The consumer's: read_ plus what it took and still holds (and skips it met: Available).
  mutable std::uint64_t taken_;
};

}  // namespace tern::ipc
