#include "tern/http/tokens.hpp"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <sstream>
#include <tern/errno_text.hpp>

namespace tern::http {
namespace {

constexpr std::size_t kMaxFileBytes = 1 << 20;
constexpr std::string_view kPrefix = "tern_";

std::string Hex(const unsigned char* bytes, std::size_t size) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(size * 2);
  for (std::size_t i = 0; i < size; ++i) {
    out.push_back(kDigits[bytes[i] >> 4]);
    out.push_back(kDigits[bytes[i] & 15]);
  }
  return out;
}

std::string NowRfc3339() {
  const std::time_t now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm utc{};
  gmtime_r(&now, &utc);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &utc);
  return text;
}

bool ValidName(const std::string& name) {
  if (name.empty() || name.size() > 64) return false;
  for (char c : name) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '-')) {
      return false;
    }
  }
  return true;
}

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

Expected<std::vector<TokenEntry>> Parse(const std::string& text, const std::string& path) {
  std::vector<TokenEntry> entries;
  std::istringstream lines(text);
  std::string line;
  int number = 0;
  while (std::getline(lines, line)) {
    ++number;
    if (line.empty() || line[0] == '#') continue;
    std::istringstream fields(line);
    TokenEntry entry;
    std::string access;
    if (!(fields >> entry.name >> access >> entry.hash >> entry.created) ||
        (access != "read-only" && access != "admin") || entry.hash.size() != 64 ||
        !ValidName(entry.name)) {
      return Fail(path + ":" + std::to_string(number) +
                  ": not a token line (NAME read-only|admin SHA256 CREATED)");
    }
    entry.access = access == "admin" ? TokenAccess::kAdmin : TokenAccess::kReadOnly;
    entries.push_back(std::move(entry));
  }
  return entries;
}

Expected<void> Write(const std::string& path, const std::vector<TokenEntry>& entries) {
  std::string text = "# tern API tokens (tern token create/list/revoke); SHA-256 only\n";
  for (const auto& entry : entries) {
    text += entry.name + " " + std::string(ToString(entry.access)) + " " + entry.hash + " " +
            entry.created + "\n";
  }
  const std::filesystem::path target(path);
  std::error_code ignored;
  if (target.has_parent_path()) std::filesystem::create_directories(target.parent_path(), ignored);
  const std::string temp = path + ".tmp." + std::to_string(::getpid());
  ::unlink(temp.c_str());
  Fd file{::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600)};
  if (file.fd < 0) return Fail(Errno("cannot create " + temp));
  std::size_t done = 0;
  while (done < text.size()) {
    const ssize_t wrote = ::write(file.fd, text.data() + done, text.size() - done);
    if (wrote < 0 && errno == EINTR) continue;
    if (wrote <= 0) {
      ::unlink(temp.c_str());
      return Fail(Errno("cannot write " + temp));
    }
    done += static_cast<std::size_t>(wrote);
  }
  if (::fchmod(file.fd, 0600) != 0 || ::fsync(file.fd) != 0) {
    ::unlink(temp.c_str());
    return Fail(Errno("cannot sync " + temp));
  }
  if (::rename(temp.c_str(), path.c_str()) != 0) {
    ::unlink(temp.c_str());
    return Fail(Errno("cannot replace " + path));
  }
  const std::string dir = target.has_parent_path() ? target.parent_path().string() : ".";
  Fd directory{::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)};
  if (directory.fd >= 0) ::fsync(directory.fd);
  return {};
}

}  // namespace

std::string_view ToString(TokenAccess access) {
  return access == TokenAccess::kAdmin ? "admin" : "read-only";
}

std::string HashToken(std::string_view token) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  EVP_Digest(token.data(), token.size(), digest, &size, EVP_sha256(), nullptr);
  return Hex(digest, size);
}

Expected<std::vector<TokenEntry>> ReadTokens(const std::string& path, uid_t owner) {
  Fd file{::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)};
  if (file.fd < 0) {
    if (errno == ENOENT) return std::vector<TokenEntry>{};
    if (errno == ELOOP) return Fail("token file " + path + " is a symlink; it must be a file");
    return Fail(Errno("cannot open the token file " + path));
  }
  struct stat info {};
  if (::fstat(file.fd, &info) != 0) return Fail(Errno("cannot stat " + path));
  if (!S_ISREG(info.st_mode)) return Fail("token file " + path + " is not a regular file");
  if (info.st_uid != owner || (info.st_mode & 077) != 0) {
    return Fail("token file " + path + " must be owned by uid " + std::to_string(owner) +
                " and readable by it alone (chown " + std::to_string(owner) + " " + path +
                "; chmod 600 " + path + ")");
  }
  if (static_cast<std::size_t>(info.st_size) > kMaxFileBytes) {
    return Fail("token file " + path + " is larger than 1 MiB");
  }
  std::string text(static_cast<std::size_t>(info.st_size), '\0');
  std::size_t got = 0;
  while (got < text.size()) {
    const ssize_t read = ::read(file.fd, text.data() + got, text.size() - got);
    if (read < 0 && errno == EINTR) continue;
    if (read < 0) return Fail(Errno("cannot read " + path));
    if (read == 0) break;
    got += static_cast<std::size_t>(read);
  }
  text.resize(got);
  return Parse(text, path);
}

Expected<CreatedToken> CreateToken(const std::string& path, const std::string& name,
                                   TokenAccess access, uid_t owner) {
  auto entries = ReadTokens(path, owner);
  if (!entries) return Unexpected<Error>{entries.error()};
  auto taken = [&](const std::string& wanted) {
    for (const auto& entry : *entries) {
      if (entry.name == wanted) return true;
    }
    return false;
  };
  CreatedToken created;
  created.entry.name = name;
  if (name.empty()) {
    for (int n = 1; created.entry.name.empty() || taken(created.entry.name); ++n) {
      created.entry.name = "token-" + std::to_string(n);
    }
  } else if (!ValidName(name)) {
    return Fail("token name '" + name + "' may hold only 1-64 letters, digits, '_', '.', '-'");
  } else if (taken(name)) {
    return Fail("a token named '" + name + "' exists already (tern token revoke " + name + ")");
  }
  unsigned char secret[32];
  if (RAND_bytes(secret, sizeof secret) != 1) return Fail("no random bytes for a token");
  created.token = std::string(kPrefix) + Hex(secret, sizeof secret);
  OPENSSL_cleanse(secret, sizeof secret);
  created.entry.access = access;
  created.entry.hash = HashToken(created.token);
  created.entry.created = NowRfc3339();
  entries->push_back(created.entry);
  if (auto written = Write(path, *entries); !written) return Unexpected<Error>{written.error()};
  return created;
}

Expected<TokenEntry> RevokeToken(const std::string& path, const std::string& name, uid_t owner) {
  auto entries = ReadTokens(path, owner);
  if (!entries) return Unexpected<Error>{entries.error()};
  for (auto entry = entries->begin(); entry != entries->end(); ++entry) {
    if (entry->name != name) continue;
    TokenEntry revoked = *entry;
    entries->erase(entry);
    if (auto written = Write(path, *entries); !written) return Unexpected<Error>{written.error()};
    return revoked;
  }
  return Fail("no token named '" + name + "' in " + path + " (tern token list)");
}

Expected<TokenEntry> FindToken(const std::vector<TokenEntry>& entries, std::string_view token) {
  if (token.size() != kPrefix.size() + 64 || token.substr(0, kPrefix.size()) != kPrefix) {
    return Fail("not a tern token (tern_ and 64 hex digits)");
  }
  const std::string hash = HashToken(token);
  const TokenEntry* found = nullptr;
  for (const auto& entry : entries) {
    if (CRYPTO_memcmp(entry.hash.data(), hash.data(), hash.size()) == 0) found = &entry;
  }
  if (found == nullptr) return Fail("unknown or revoked token");
  return *found;
}

}  // namespace tern::http
