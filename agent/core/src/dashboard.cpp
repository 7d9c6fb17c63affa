#include "tern/agent/dashboard.hpp"

namespace tern::agent {

const DashboardAsset* FindDashboardAsset(std::string_view request_path) {
  std::string_view path;
  if (request_path == "/" || request_path == "/index.html") {
    path = "/index.html";
  } else if (request_path.starts_with("/dashboard/")) {
    path = request_path.substr(std::string_view("/dashboard").size());
  } else {
    return nullptr;
  }
  for (const auto& asset : DashboardAssets()) {
    if (asset.path == path) return &asset;
  }
  return nullptr;
}

std::vector<std::pair<std::string, std::string>> DashboardResponseHeaders() {
  return {{"Content-Security-Policy",
           "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
           "frame-ancestors 'none'"},
          {"X-Content-Type-Options", "nosniff"},
          {"Cache-Control", "no-cache"}};
}

}  // namespace tern::agent
