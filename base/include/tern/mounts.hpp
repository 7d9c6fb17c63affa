// Facts about the file system a path lives on.
//
// Thread-safety: thread-safe.
#pragma once

#include <string>

namespace tern {

// Whether `path` is on a tmpfs (false too when it cannot be asked: a missing path).
bool OnTmpfs(const std::string& path);

}  // namespace tern
