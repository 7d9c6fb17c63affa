#include "stream_rings.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <tern/fd_control.hpp>

#include "send_all.hpp"

namespace tern::libtern {

namespace {

constexpr std::size_t kFramesAt = 0;
constexpr std::size_t kAcksAt = ipc::ShmRing::BytesFor(StreamRings::kFrameRing);
constexpr std::size_t kBlockBytes = kAcksAt + ipc::ShmRing::BytesFor(StreamRings::kAckRing);

std::string Errno(const char* what) { return std::string(what) + ": " + std::strerror(errno); }

std::span<std::byte> Part(void* block, std::size_t at, std::size_t size) {
  return {static_cast<std::byte*>(block) + at, size};
}

}  // namespace

StreamRings::StreamRings(void* block, std::size_t size, ipc::ShmRing frames, ipc::ShmRing acks)
    : block_(block), size_(size), frames_(frames), acks_(acks) {}

StreamRings::~StreamRings() { ::munmap(block_, size_); }

Expected<std::pair<std::unique_ptr<StreamRings>, UniqueFd>> StreamRings::Create() {
  UniqueFd memfd(::memfd_create("tern-stream", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!memfd.valid()) return Fail(Errno("memfd_create"));
  if (::ftruncate(memfd.get(), static_cast<off_t>(kBlockBytes)) != 0) {
    return Fail(Errno("ftruncate"));
  }
  // Its size is fixed: the writer maps what the reader made, and neither can shrink it under
  // the other (a mapping past the end would fault).
  (void)::fcntl(memfd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
  void* block = ::mmap(nullptr, kBlockBytes, PROT_READ | PROT_WRITE, MAP_SHARED, memfd.get(), 0);
  if (block == MAP_FAILED) return Fail(Errno("mmap"));
  auto frames = ipc::ShmRing::Create(Part(block, kFramesAt, kAcksAt), kFrameRing);
  auto acks = ipc::ShmRing::Create(Part(block, kAcksAt, kBlockBytes - kAcksAt), kAckRing);
  if (!frames || !acks) {
    ::munmap(block, kBlockBytes);
    return Fail("cannot lay out the stream's rings");
  }
  std::unique_ptr<StreamRings> rings(new StreamRings(block, kBlockBytes, *frames, *acks));
  return std::make_pair(std::move(rings), std::move(memfd));
}

Expected<std::unique_ptr<StreamRings>> StreamRings::Attach(UniqueFd memfd) {
  struct stat info {};
  if (::fstat(memfd.get(), &info) != 0) return Fail(Errno("fstat"));
  // Exactly the layout Create makes, sealed so: a block of another size, or one that could
  // shrink under the mapping, is not taken.
  const int seals = ::fcntl(memfd.get(), F_GET_SEALS);
  if (static_cast<std::size_t>(info.st_size) != kBlockBytes || seals < 0 ||
      (seals & F_SEAL_SHRINK) == 0) {
    return Fail("the stream's rings are not the expected memfd");
  }
  void* block = ::mmap(nullptr, kBlockBytes, PROT_READ | PROT_WRITE, MAP_SHARED, memfd.get(), 0);
  if (block == MAP_FAILED) return Fail(Errno("mmap"));
  memfd.Reset();
  auto frames = ipc::ShmRing::Attach(Part(block, kFramesAt, kAcksAt));
  auto acks = ipc::ShmRing::Attach(Part(block, kAcksAt, kBlockBytes - kAcksAt));
  if (!frames || !acks) {
    ::munmap(block, kBlockBytes);
    return Fail("the stream's rings have no valid headers");
  }
  return std::unique_ptr<StreamRings>(new StreamRings(block, kBlockBytes, *frames, *acks));
}

void StreamRings::Revoke() {
  frames_.Revoke();
  acks_.Revoke();
}

bool StreamRings::WriteWhole(ipc::ShmRing& ring, std::string_view bytes) {
  if (ring.Space() < bytes.size()) return false;
  ring.Write(std::as_bytes(std::span<const char>(bytes.data(), bytes.size())));
  return true;
}

std::size_t StreamRings::CopyOut(ipc::ShmRing& ring, char* to, std::size_t room, bool& rang) {
  std::size_t copied = 0;
  // At most two runs: up to the end of the ring, then from its start.
  for (int run = 0; run < 2 && copied < room; ++run) {
    const std::span<const std::byte> readable = ring.Readable();
    const std::size_t n = std::min(readable.size(), room - copied);
    if (n == 0) break;
    std::memcpy(to + copied, readable.data(), n);
    copied += n;
    rang |= ring.Release(n);
  }
  return copied;
}

int SendWithFd(int fd, std::string_view bytes, int pass) {
  iovec piece{const_cast<char*>(bytes.data()), bytes.size()};
  msghdr message{};
  message.msg_iov = &piece;
  message.msg_iovlen = 1;
  FdControl control(pass);
  control.AttachTo(message);
  for (;;) {
    const ssize_t n = ::sendmsg(fd, &message, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno;
    // The fd went with the first byte; the rest (if any) as plain bytes.
    if (static_cast<std::size_t>(n) == bytes.size()) return 0;
    const std::string_view rest = bytes.substr(static_cast<std::size_t>(n));
    return SendAll(fd, {&rest, 1});
  }
}

bool RingBell(int fd) {
  static const std::string bell = ipc::EncodeFrame(kDirectStreamBell, {});
  const std::string_view bytes(bell);
  return SendAll(fd, {&bytes, 1}) == 0;
}

}  // namespace tern::libtern
