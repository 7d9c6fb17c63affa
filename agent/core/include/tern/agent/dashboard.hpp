// Dashboard: the web page at `/` of the agent's HTTP listeners (agent/dashboard/, docs/api.md),
// compiled into ternd as byte arrays by agent/dashboard/embed.cmake.
//
// Contract: FindDashboardAsset maps a request path to a file: "/" and "/index.html" to the page,
// "/dashboard/<file>" to its file ("/dashboard/vendor/uplot/uPlot.iife.min.js"); nullptr for
// anything else. DashboardResponseHeaders are the headers every asset is served with (a strict
// Content-Security-Policy: the page loads only its own files and talks only to its own agent).
//
// Thread-safety: immutable data; safe from any thread.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace tern::agent {

struct DashboardAsset {
  std::string_view path;  // "/index.html", "/app.js", "/vendor/uplot/uPlot.min.css"
  std::string_view content_type;
  std::string_view data;
};

const std::vector<DashboardAsset>& DashboardAssets();  // generated
const DashboardAsset* FindDashboardAsset(std::string_view request_path);
std::vector<std::pair<std::string, std::string>> DashboardResponseHeaders();

}  // namespace tern::agent
