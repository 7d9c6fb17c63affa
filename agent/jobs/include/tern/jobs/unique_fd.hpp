// tern::jobs::UniqueFd is tern::UniqueFd (ipc/include/tern/unique_fd.hpp), one RAII fd type
// for the agent and libtern alike.
#pragma once

#include <tern/unique_fd.hpp>

namespace tern::jobs {
using tern::UniqueFd;
}  // namespace tern::jobs
