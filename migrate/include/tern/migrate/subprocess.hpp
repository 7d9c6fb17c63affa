// The old path of tern/subprocess.hpp (tern_base), kept while branches that name
// migrate::BackgroundProcess and the rest are merged (issue 19); new code includes
// <tern/subprocess.hpp> and says tern::.
#pragma once

#include <tern/subprocess.hpp>

namespace tern::migrate {
using tern::BackgroundProcess;
using tern::ChildRegistryMutex;
using tern::IsManagedChild;
using tern::RunSubprocess;
using tern::SubprocessOptions;
using tern::SubprocessResult;
}  // namespace tern::migrate
