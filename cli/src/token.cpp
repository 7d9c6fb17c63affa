#include "tern/cli/token.hpp"

#include <unistd.h>

#include <cstdlib>
#include <iomanip>
#include <tern/http/tokens.hpp>

namespace tern::cli {

std::string ResolveTokensFile(const std::string& flag) {
  if (!flag.empty()) return flag;
  if (const char* env = std::getenv("TERN_TOKENS"); env != nullptr && *env != '\0') return env;
  return "/etc/tern/tokens";
}

int Token(const TokenOptions& options, std::ostream& out, std::ostream& err) {
  const std::string file = ResolveTokensFile(options.file);
  // The agent believes only a root-owned file; anyone else's would be refused by it anyway.
  if (::geteuid() != 0) {
    err << "tern token: only root can manage API tokens (" << file << " is root's)\n";
    return 1;
  }
  switch (options.action) {
    case TokenOptions::Action::kCreate: {
      const auto access = options.admin ? http::TokenAccess::kAdmin : http::TokenAccess::kReadOnly;
      auto created = http::CreateToken(file, options.name, access, 0);
      if (!created) {
        err << "tern token create: " << created.error().message << "\n";
        return 1;
      }
      err << "token " << created->entry.name << " (" << http::ToString(access) << ") added to "
          << file << "; it is shown only now:\n";
      out << created->token << "\n";
      return 0;
    }
    case TokenOptions::Action::kList: {
      auto entries = http::ReadTokens(file, 0);
      if (!entries) {
        err << "tern token list: " << entries.error().message << "\n";
        return 1;
      }
      out << std::left << std::setw(20) << "NAME" << std::setw(11) << "ACCESS" << std::setw(22)
          << "CREATED"
          << "SHA256\n";
      for (const auto& entry : *entries) {
        out << std::setw(20) << entry.name << std::setw(11) << http::ToString(entry.access)
            << std::setw(22) << entry.created << entry.hash.substr(0, 12) << "\n";
      }
      return 0;
    }
    case TokenOptions::Action::kRevoke: {
      auto revoked = http::RevokeToken(file, options.name, 0);
      if (!revoked) {
        err << "tern token revoke: " << revoked.error().message << "\n";
        return 1;
      }
      out << "revoked " << revoked->name << "\n";
      return 0;
    }
  }
  return 2;
}

}  // namespace tern::cli
