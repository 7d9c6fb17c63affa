// tern::jobs::UniqueFd is tern::UniqueFd (base/include/tern/unique_fd.hpp, tern_base), one RAII fd type
// for the agent and libtern alike.
#pragma once

#include <tern/unique_fd.hpp>

namespace tern::jobs {
using tern::UniqueFd;
}  // namespace tern::jobs
