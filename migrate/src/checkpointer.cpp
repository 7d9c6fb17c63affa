#include "tern/migrate/checkpointer.hpp"

namespace tern::migrate {

std::string_view ToString(StepKind kind) {
  switch (kind) {
    case StepKind::kCheck:
      return "check";
    case StepKind::kPreDump:
      return "pre_dump";
    case StepKind::kDump:
      return "dump";
    case StepKind::kServePages:
      return "serve_pages";
    case StepKind::kPrepareReceive:
      return "prepare_receive";
    case StepKind::kRestore:
      return "restore";
    case StepKind::kPullPages:
      return "pull_pages";
  }
  return "unknown";
}

}  // namespace tern::migrate
