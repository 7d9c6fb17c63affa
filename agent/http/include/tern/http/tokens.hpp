// API tokens: bearer tokens for the agent's TCP API (docs/api.md "Tokens"), kept hashed in one
// file that only root can read and write.
//
// Contract:
//  - A token is "tern_" followed by 64 hex digits (32 random bytes). It is shown once, when
//    created; the file keeps only its SHA-256, so reading the file does not give a token away.
//  - The file holds one token a line: "NAME ACCESS SHA256HEX CREATED" (ACCESS `read-only` or
//    `admin`, CREATED RFC 3339 UTC); blank lines and '#' lines are ignored.
//  - The file must be a regular file (not a symlink), with no group or other permission bits,
//    owned by `owner` (root for the agent and `tern token`): otherwise every call fails with
//    an error that says how to fix it, so a token file that others could write is never
//    believed. A missing file holds no tokens.
//  - Changes replace the file atomically (a 0600 temp file, fsync, rename, fsync of the
//    directory).
//  - Names are 1-64 of [A-Za-z0-9_.-] and unique.
//
// Thread-safety: free functions without shared state; two processes changing the file at the
// same moment can lose one change (the last rename wins).
#pragma once

#include <sys/types.h>

#include <string>
#include <string_view>
#include <tern/expected.hpp>
#include <vector>

namespace tern::http {

enum class TokenAccess { kReadOnly, kAdmin };

struct TokenEntry {
  std::string name;
  TokenAccess access = TokenAccess::kReadOnly;
  std::string hash;  // SHA-256 of the token, 64 lowercase hex digits
  std::string created;
};

struct CreatedToken {
  TokenEntry entry;
  std::string token;  // the secret itself: print it once, it is not kept
};

std::string_view ToString(TokenAccess access);
std::string HashToken(std::string_view token);

Expected<std::vector<TokenEntry>> ReadTokens(const std::string& path, uid_t owner);
// An empty `name` becomes "token-N" (the first unused N).
Expected<CreatedToken> CreateToken(const std::string& path, const std::string& name,
                                   TokenAccess access, uid_t owner);
Expected<TokenEntry> RevokeToken(const std::string& path, const std::string& name, uid_t owner);
// The entry whose hash is the token's (compared in constant time), or why there is none.
Expected<TokenEntry> FindToken(const std::vector<TokenEntry>& entries, std::string_view token);

}  // namespace tern::http
