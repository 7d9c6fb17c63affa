// The old path of tern/remove_tree.hpp (tern_base), kept while branches that name
// migrate::RemoveTreeNoFollow are merged (issue 19); new code includes <tern/remove_tree.hpp>.
#pragma once

#include <tern/remove_tree.hpp>

namespace tern::migrate {
using tern::RemoveTreeNoFollow;
}  // namespace tern::migrate
