#include "tern/migrate/machine_actions.hpp"

namespace tern::migrate {

std::string_view ToString(ReportKind kind) {
  switch (kind) {
    case ReportKind::kMoved:
      return "moved";
    case ReportKind::kDryRunPassed:
      return "dry_run_passed";
    case ReportKind::kFailed:
      return "failed";
    case ReportKind::kUnconfirmed:
      return "unconfirmed";
    case ReportKind::kBlocked:
      return "blocked";
    case ReportKind::kRecovered:
      return "recovered";
  }
  return "unknown";
}

}  // namespace tern::migrate
