#include <gtest/gtest.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>

#include "tls_test_certs.hpp"

namespace tern::ipc {
namespace {

using testing::TestCa;

TEST(TlsFilesTest, IssuedCertificateNamesTheNodeAndIsSignedByTheCa) {
  TestCa ca;
  const TlsFiles files = ca.Issue("node7");
  struct stat info {};
  ASSERT_EQ(::stat(files.key.c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0600u) << "node keys are 0600";
  ASSERT_EQ(::stat((ca.dir() + "/ca.key").c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0600u) << "the CA key is 0600";

  FILE* file = std::fopen(files.cert.c_str(), "r");
  ASSERT_NE(file, nullptr);
  X509* cert = PEM_read_X509(file, nullptr, nullptr, nullptr);
  std::fclose(file);
  ASSERT_NE(cert, nullptr);
  EXPECT_EQ(X509_check_host(cert, "node7", 0, 0, nullptr), 1) << "SAN dNSName = the node";
  EXPECT_EQ(X509_check_ip_asc(cert, "127.0.0.1", 0), 1) << "the --ip SAN";
  EXPECT_NE(X509_get_extended_key_usage(cert) & XKU_SSL_SERVER, 0u);
  EXPECT_NE(X509_get_extended_key_usage(cert) & XKU_SSL_CLIENT, 0u);
  EXPECT_EQ(X509_check_ca(cert), 0) << "a node certificate is no CA";
  char cn[64] = {};
  X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof cn);
  EXPECT_STREQ(cn, "node7");
  X509_free(cert);

  EXPECT_TRUE(MakeTlsContext(files, TlsRole::kServer)) << "the files make a context";
  EXPECT_TRUE(MakeTlsContext(files, TlsRole::kClient));
}

TEST(TlsFilesTest, RefusesToOverwriteWithoutForce) {
  TestCa ca;
  ca.Issue("n1");
  NodeCertRequest request{.node = "n1", .ips = {}, .ca_dir = ca.dir()};
  auto again = IssueNodeCertificate(request);
  ASSERT_FALSE(again);
  EXPECT_NE(again.error().message.find("exists"), std::string::npos) << again.error().message;
  auto ca_again = CreateClusterCa(ca.dir());
  ASSERT_FALSE(ca_again);
  EXPECT_NE(ca_again.error().message.find("refusing to overwrite"), std::string::npos);
}

TEST(TlsFilesTest, RefusesBadNodeNamesAndAddresses) {
  TestCa ca;
  EXPECT_FALSE(IssueNodeCertificate({.node = "../etc/x", .ips = {}, .ca_dir = ca.dir()}));
  EXPECT_FALSE(IssueNodeCertificate({.node = "", .ips = {}, .ca_dir = ca.dir()}));
  EXPECT_FALSE(IssueNodeCertificate({.node = "n2", .ips = {"10.0.0.999"}, .ca_dir = ca.dir()}));
}

TEST(TlsFilesTest, KeyFilesOthersMayReadAreRefused) {
  TestCa ca;
  const TlsFiles files = ca.Issue("n3");
  ASSERT_EQ(::chmod(files.key.c_str(), 0644), 0);
  auto checked = CheckKeyFile(files.key);
  ASSERT_FALSE(checked);
  EXPECT_NE(checked.error().message.find("mode 0644"), std::string::npos)
      << checked.error().message;
  auto context = MakeTlsContext(files, TlsRole::kServer);
  ASSERT_FALSE(context) << "a context is not made with a readable key";
  EXPECT_NE(context.error().message.find("chmod 600"), std::string::npos);
  ASSERT_EQ(::chmod(files.key.c_str(), 0400), 0);
  EXPECT_TRUE(CheckKeyFile(files.key)) << "stricter than 0600 is fine";
}

TEST(TlsFilesTest, SymlinkedKeyIsRefused) {
  TestCa ca;
  const TlsFiles files = ca.Issue("n4");
  const std::string link = ca.dir() + "/link.key";
  ASSERT_EQ(::symlink(files.key.c_str(), link.c_str()), 0);
  auto checked = CheckKeyFile(link);
  ASSERT_FALSE(checked);
  EXPECT_NE(checked.error().message.find("symlink"), std::string::npos) << checked.error().message;
}

TEST(TlsFilesTest, MissingCertificateSaysWhere) {
  TestCa ca;
  TlsFiles files = ca.Issue("n5");
  files.cert = ca.dir() + "/nothing.crt";
  auto context = MakeTlsContext(files, TlsRole::kClient);
  ASSERT_FALSE(context);
  EXPECT_NE(context.error().message.find("no TLS certificate at " + files.cert), std::string::npos)
      << context.error().message;
}

TEST(TlsFilesTest, KeyOfAnotherCertificateIsRefused) {
  TestCa ca;
  TlsFiles files = ca.Issue("n6");
  files.key = ca.Issue("n7").key;
  auto context = MakeTlsContext(files, TlsRole::kServer);
  ASSERT_FALSE(context);
  EXPECT_NE(context.error().message.find("mismatch"), std::string::npos) << context.error().message;
}

}  // namespace
}  // namespace tern::ipc
