// Re-attaching a job's IPC channel (docs/ipc.md "A channel the job reconnects", docs/wire.md
// "The job channel"): the codec of the three frames, shared by libtern and the agent, and the
// agent's decision on an attach, without I/O.
//
// Every new channel starts with the agent's IpcHello: the job's id, a per-job secret (32
// bytes the agent keeps in its run directory, which outlives the agent's process as the job
// does; the agent's JobSecret, job_secret.hpp, derives it from the cluster secret, so that every
// node gives a job the same one) and the path of the agent's job socket. When the channel reads end
// of file (the agent was killed), libtern connects to that path and sends IpcAttach (job id and
// secret); the agent answers IpcAttached, with the job's end of a fresh channel as SCM_RIGHTS on
// its first byte when it accepts. A frame is at most kMaxAttachFrame bytes; the agent reads one,
// within a deadline, and closes the connection after its answer.
//
// Thread-safety: free functions on values; none keeps state.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace tern::ipc {

inline constexpr std::size_t kJobSecretSize = 32;
// Hello, attach and attached payloads are all far below this; a larger header is refused
// before its payload is read.
inline constexpr std::size_t kMaxAttachFrame = 4096;
inline constexpr std::size_t kMaxAttachJobId = 200;    // as IsValidJobId allows
inline constexpr std::size_t kMaxJobSocketPath = 107;  // sun_path less its terminator
inline constexpr std::uint8_t kAttachVersion = 1;

struct ChannelHello {
  std::string job;
  std::string secret;       // kJobSecretSize bytes
  std::string socket_path;  // the agent's job socket, absolute
};
std::string EncodeChannelHello(const ChannelHello& hello);
// Nullopt for a payload that is cut short, too long in any field, or has bytes left over.
std::optional<ChannelHello> DecodeChannelHello(std::string_view payload);

struct AttachRequest {
  std::string job;
  std::string secret;
};
std::string EncodeAttachRequest(const AttachRequest& request);
std::optional<AttachRequest> DecodeAttachRequest(std::string_view payload);

struct AttachAnswer {
  bool ok = false;
  std::string why;  // a refusal's reason
  // The agent put back the rights and the answers due to the job from a migration's hand-off
  // it could not install before (its restart after the commit): the job's requests in flight
  // are answered on the new channel, and its names stand as they were.
  bool restored = false;
  // The agent restarted and gave back the rights its own files hold for the job (docs/ipc.md
  // "Port homes that survive their agent"): the job's names stand as they were, but the
  // requests it had in flight died with the old agent.
  bool kept = false;
};
std::string EncodeAttachAnswer(const AttachAnswer& answer);
std::optional<AttachAnswer> DecodeAttachAnswer(std::string_view payload);

// What the agent found out about an attach before it decides (the adapter's I/O).
struct AttachFacts {
  bool job_running_here = false;      // a job of that id runs under this agent (its init known)
  std::optional<std::string> secret;  // the secret the agent keeps for it, if any
  bool peer_in_job = false;           // SO_PEERCRED's pid is the job's init or descends from it
};

// Why the agent refuses `request` (nullopt: it gives the job a new channel). The secret is
// compared in constant time. A refusal never says whether the job exists and the secret was
// wrong, or which check failed first beyond that: a prober learns nothing it could use.
std::optional<std::string> RefuseAttach(const AttachRequest& request, const AttachFacts& facts);

}  // namespace tern::ipc
