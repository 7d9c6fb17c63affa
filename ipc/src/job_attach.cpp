#include "tern/ipc/job_attach.hpp"

#include <tern/ipc/job_wire.hpp>

namespace tern::ipc {

namespace {

// Reads a length-prefixed field of at most `max` bytes.
std::optional<std::string> Field(WireReader& in, std::size_t max) {
  if (in.remaining() < 4) return std::nullopt;
  auto length = WireReader(in.rest()).U32();
  if (!length || *length > max) return std::nullopt;
  return in.Bytes();
}

bool ValidJobId(std::string_view job) {
  // It names a file in the agent's run directory.
  if (job.empty() || job.size() > kMaxAttachJobId || job == "." || job == "..") return false;
  return job.find('/') == std::string_view::npos && job.find('\0') == std::string_view::npos;
}

bool SameSecret(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  }
  return diff == 0;
}

}  // namespace

std::string EncodeChannelHello(const ChannelHello& hello) {
  WireWriter out;
  out.U8(kAttachVersion);
  out.Bytes(hello.job);
  out.Bytes(hello.secret);
  out.Bytes(hello.socket_path);
  return out.Take();
}

std::optional<ChannelHello> DecodeChannelHello(std::string_view payload) {
  WireReader in(payload);
  auto version = in.U8();
  if (!version || *version != kAttachVersion) return std::nullopt;
  ChannelHello hello;
  auto job = Field(in, kMaxAttachJobId);
  auto secret = Field(in, kJobSecretSize);
  auto path = Field(in, kMaxJobSocketPath);
  if (!job || !secret || !path || !in.AtEnd()) return std::nullopt;
  if (!ValidJobId(*job) || secret->size() != kJobSecretSize || path->empty() ||
      path->front() != '/' || path->find('\0') != std::string::npos) {
    return std::nullopt;
  }
  hello.job = std::move(*job);
  hello.secret = std::move(*secret);
  hello.socket_path = std::move(*path);
  return hello;
}

std::string EncodeAttachRequest(const AttachRequest& request) {
  WireWriter out;
  out.U8(kAttachVersion);
  out.Bytes(request.job);
  out.Bytes(request.secret);
  return out.Take();
}

std::optional<AttachRequest> DecodeAttachRequest(std::string_view payload) {
  WireReader in(payload);
  auto version = in.U8();
  if (!version || *version != kAttachVersion) return std::nullopt;
  auto job = Field(in, kMaxAttachJobId);
  auto secret = Field(in, kJobSecretSize);
  if (!job || !secret || !in.AtEnd() || !ValidJobId(*job)) return std::nullopt;
  return AttachRequest{std::move(*job), std::move(*secret)};
}

std::string EncodeAttachAnswer(const AttachAnswer& answer) {
  WireWriter out;
  out.U8(answer.ok ? 0 : 1);
  out.Bytes(answer.why);
  // 0: nothing restored, 1: a hand-off's state (restored), 2: the agent's own record (kept).
  out.U8(answer.restored ? 1 : answer.kept ? 2 : 0);
  return out.Take();
}

std::optional<AttachAnswer> DecodeAttachAnswer(std::string_view payload) {
  WireReader in(payload);
  auto outcome = in.U8();
  auto why = Field(in, kMaxAttachFrame);
  auto restored = in.U8();
  if (!outcome || *outcome > 1 || !why || !restored || *restored > 2 || !in.AtEnd()) {
    return std::nullopt;
  }
  return AttachAnswer{*outcome == 0, std::move(*why), *restored == 1 && *outcome == 0,
                      *restored == 2 && *outcome == 0};
}

std::optional<std::string> RefuseAttach(const AttachRequest& request, const AttachFacts& facts) {
  // One answer for "no such job" and "wrong secret": the prober cannot tell them apart.
  const std::string refused = "job " + request.job + " cannot re-attach here";
  if (!facts.job_running_here || !facts.secret) return refused + ": unknown job or wrong secret";
  if (!SameSecret(request.secret, *facts.secret)) {
    return refused + ": unknown job or wrong secret";
  }
  if (!facts.peer_in_job) {
    return refused + ": the connecting process is not one of the job's processes";
  }
  return std::nullopt;
}

}  // namespace tern::ipc
