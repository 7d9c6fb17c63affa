// UseHugePages: runs tern-sim again with glibc's malloc on transparent huge pages
// (GLIBC_TUNABLES=glibc.malloc.hugetlb=1), which glibc reads only when a process starts.
//
// Why: at 10,000 nodes every agent's gossip view is cold in cache when its turn comes, and with
// 4 KiB pages its cache misses are TLB misses too (a two-level page walk in a virtual machine);
// 2 MiB pages cut the CPU time of a run by about a quarter here (bench/README.md, "tern-sim").
// Results do not depend on it: only where the heap's memory sits.
//
// Contract: returns (small pages) when GLIBC_TUNABLES already names glibc.malloc.hugetlb
// (`GLIBC_TUNABLES=glibc.malloc.hugetlb=0` keeps small pages), when the kernel has no
// transparent huge pages, or when the exec fails; otherwise it does not return.
//
// Thread-safety: call first in main, before any thread starts.
#pragma once

#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

namespace tern::sim {

inline void UseHugePages(char** argv) {
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  if (tunables != nullptr && std::strstr(tunables, "glibc.malloc.hugetlb") != nullptr) return;
  std::string enabled;
  std::getline(std::ifstream("/sys/kernel/mm/transparent_hugepage/enabled"), enabled);
  if (enabled.find("[never]") != std::string::npos || enabled.empty()) return;
  const std::string value = tunables != nullptr && *tunables != '\0'
                                ? std::string(tunables) + ":glibc.malloc.hugetlb=1"
                                : std::string("glibc.malloc.hugetlb=1");
  if (setenv("GLIBC_TUNABLES", value.c_str(), 1) != 0) return;
  // The binary's own path, not /proc/self/exe: the process keeps its name (ps, pgrep).
  char self[4096];
  const ssize_t length = readlink("/proc/self/exe", self, sizeof self - 1);
  if (length > 0) {
    self[length] = '\0';
    execv(self, argv);
  }
  unsetenv("GLIBC_TUNABLES");  // the exec failed: go on as we are
  if (tunables != nullptr) setenv("GLIBC_TUNABLES", tunables, 1);
}

}  // namespace tern::sim
