#include "tern/http/tokens.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

namespace tern::http {
namespace {

class TokensTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("tern-tokens-" + std::to_string(getpid()));
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    path_ = (dir_ / "tokens").string();
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string Contents() {
    std::ifstream file(path_);
    return std::string(std::istreambuf_iterator<char>(file), {});
  }

  std::filesystem::path dir_;
  std::string path_;
  const uid_t me_ = geteuid();
};

TEST_F(TokensTest, ACreatedTokenIsFoundAndOnlyItsHashIsKept) {
  auto created = CreateToken(path_, "", TokenAccess::kReadOnly, me_);
  ASSERT_TRUE(created) << created.error().message;
  EXPECT_EQ(created->entry.name, "token-1");
  EXPECT_EQ(created->token.size(), 5u + 64u);
  EXPECT_EQ(created->token.rfind("tern_", 0), 0u);
  const std::string text = Contents();
  EXPECT_EQ(text.find(created->token.substr(5)), std::string::npos) << "the secret is not stored";
  EXPECT_NE(text.find(HashToken(created->token)), std::string::npos);
  struct stat info {};
  ASSERT_EQ(::stat(path_.c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0600u);

  auto admin = CreateToken(path_, "ops", TokenAccess::kAdmin, me_);
  ASSERT_TRUE(admin) << admin.error().message;
  auto entries = ReadTokens(path_, me_);
  ASSERT_TRUE(entries) << entries.error().message;
  ASSERT_EQ(entries->size(), 2u);
  auto found = FindToken(*entries, admin->token);
  ASSERT_TRUE(found) << found.error().message;
  EXPECT_EQ(found->name, "ops");
  EXPECT_EQ(found->access, TokenAccess::kAdmin);
  EXPECT_EQ(FindToken(*entries, created->token)->access, TokenAccess::kReadOnly);
}

TEST_F(TokensTest, WrongOrRevokedTokensAreRefused) {
  auto created = CreateToken(path_, "dash", TokenAccess::kReadOnly, me_);
  ASSERT_TRUE(created);
  auto entries = ReadTokens(path_, me_);
  std::string forged = created->token;
  forged.back() = forged.back() == '0' ? '1' : '0';
  EXPECT_FALSE(FindToken(*entries, forged));
  EXPECT_FALSE(FindToken(*entries, ""));
  EXPECT_FALSE(FindToken(*entries, "dash"));
  EXPECT_FALSE(CreateToken(path_, "dash", TokenAccess::kAdmin, me_)) << "names are unique";
  EXPECT_FALSE(CreateToken(path_, "a b", TokenAccess::kAdmin, me_)) << "names are one word";
  auto revoked = RevokeToken(path_, "dash", me_);
  ASSERT_TRUE(revoked) << revoked.error().message;
  entries = ReadTokens(path_, me_);
  ASSERT_TRUE(entries);
  EXPECT_FALSE(FindToken(*entries, created->token)) << "a revoked token stops at once";
  EXPECT_FALSE(RevokeToken(path_, "dash", me_));
}

TEST_F(TokensTest, AFileOthersCouldWriteOrOwnIsRefused) {
  ASSERT_TRUE(CreateToken(path_, "x", TokenAccess::kAdmin, me_));
  ASSERT_EQ(::chmod(path_.c_str(), 0644), 0);
  auto open = ReadTokens(path_, me_);
  ASSERT_FALSE(open);
  EXPECT_NE(open.error().message.find("chmod 600"), std::string::npos) << open.error().message;
  ASSERT_EQ(::chmod(path_.c_str(), 0600), 0);
  auto foreign = ReadTokens(path_, me_ + 1);
  ASSERT_FALSE(foreign);
  EXPECT_NE(foreign.error().message.find("owned by uid"), std::string::npos);
  const std::string link = (dir_ / "link").string();
  ASSERT_EQ(::symlink(path_.c_str(), link.c_str()), 0);
  EXPECT_FALSE(ReadTokens(link, me_)) << "a symlink is not followed";
  auto missing = ReadTokens((dir_ / "none").string(), me_);
  ASSERT_TRUE(missing);
  EXPECT_TRUE(missing->empty());
  std::ofstream(path_, std::ios::app) << "garbage line\n";
  EXPECT_FALSE(ReadTokens(path_, me_));
}

}  // namespace
}  // namespace tern::http
