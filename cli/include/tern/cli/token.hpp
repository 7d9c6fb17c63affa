// `tern token create|list|revoke`: the bearer tokens of the agents' TCP API (docs/api.md
// "Tokens"). Root only: they edit the token file (tern/http/tokens.hpp) on this machine; the
// agent reads it on every TCP request, so a change takes effect at once.
//
// Thread-safety: plain functions.
#pragma once

#include <ostream>
#include <string>

namespace tern::cli {

struct TokenOptions {
  enum class Action { kCreate, kList, kRevoke };
  Action action = Action::kList;
  bool admin = false;  // create: an admin token (acts as root); else read-only
  std::string name;    // create: optional; revoke: required
  std::string file;    // default: $TERN_TOKENS, else /etc/tern/tokens
};

std::string ResolveTokensFile(const std::string& flag);
int Token(const TokenOptions& options, std::ostream& out, std::ostream& err);

}  // namespace tern::cli
