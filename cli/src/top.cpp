#include "tern/cli/top.hpp"

#include <poll.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <ctime>
#include <iostream>
#include <mutex>
#include <thread>

#include "tern/cli/event_follow.hpp"
#include "tern/json_text.hpp"

namespace tern::cli {
namespace {

using nlohmann::json;
constexpr std::size_t kMigrationLines = 8;

std::string S(const json& object, const char* key) { return JsonText(object, key); }

double D(const json& object, const char* key) {
  const auto found = object.find(key);
  return found != object.end() && found->is_number() ? found->get<double>() : 0.0;
}

std::string Fixed(double value, int decimals) {
  char text[32];
  std::snprintf(text, sizeof text, "%.*f", decimals, value);
  return text;
}

std::string Bytes(double bytes) {
  const char* units[] = {"B", "K", "M", "G", "T"};
  int unit = 0;
  while (bytes >= 1024 && unit < 4) {
    bytes /= 1024;
    ++unit;
  }
  return Fixed(bytes, bytes < 10 && unit > 0 ? 1 : 0) + units[unit];
}

std::string Pad(std::string text, std::size_t width) {
  if (text.size() > width) return text.substr(0, width);
  text.resize(width, ' ');
  return text;
}

// A bar of `width` cells filled to `fraction` (clamped to 0..1) with '#'.
std::string Bar(double fraction, std::size_t width) {
  fraction = std::clamp(fraction, 0.0, 1.0);
  const auto filled = static_cast<std::size_t>(std::lround(fraction * static_cast<double>(width)));
  return "[" + std::string(filled, '#') + std::string(width - filled, '.') + "]";
}

std::string Clock(const std::string& rfc3339) {
  // "2026-12-04T23:11:58.123Z" → "23:11:58"
  return rfc3339.size() >= 19 ? rfc3339.substr(11, 8) : rfc3339;
}

}  // namespace

void TopModel::SetNodes(const json& nodes) {
  if (!nodes.is_array()) return;
  nodes_.clear();
  for (const auto& node : nodes) {
    if (node.is_object()) nodes_[S(node, "name")] = node;
  }
}

void TopModel::SetJobs(const json& jobs) {
  if (!jobs.is_array()) return;
  jobs_.clear();
  for (const auto& job : jobs) {
    if (job.is_object()) jobs_[S(job, "id")] = job;
  }
}

void TopModel::OnEvent(const json& event) {
  if (!event.is_object()) return;
  const std::string type = S(event, "type");
  if (type == "job") {
    const std::string id = S(event, "id");
    auto existing = jobs_.find(id);
    // The node a job left still reports it ended there; the running copy is the true one.
    if (existing != jobs_.end() && S(existing->second, "state") == "running" &&
        S(event, "state") != "running" && S(existing->second, "node") != S(event, "node")) {
      return;
    }
    jobs_[id] = event;
  } else if (type == "node") {
    auto found = nodes_.find(S(event, "name"));
    if (found != nodes_.end()) found->second["state"] = S(event, "state");
  } else if (type == "migration") {
    const std::string what = S(event, "event");
    const std::string id = S(event, "id");
    std::string line = Clock(S(event, "time")) + "  " + Pad(S(event, "job"), 12) + " ";
    if (what == "started") {
      started_[id] = event;
      line += S(event, "from") + " -> " + S(event, "to") + "  moving (" + S(event, "mode") + ")";
    } else if (what == "moved") {
      line += S(event, "from") + " -> " + S(event, "to") + "  moved: freeze " +
              Fixed(D(event, "freeze_ms"), 0) + " ms, total " + Fixed(D(event, "total_ms"), 0) +
              " ms, " + Bytes(D(event, "bytes"));
      auto job = jobs_.find(S(event, "job"));
      if (job != jobs_.end()) job->second["node"] = S(event, "to");
      started_.erase(id);
    } else if (what == "failed") {
      line += S(event, "node") + " -> " + S(event, "to") + "  FAILED: " + S(event, "error");
      started_.erase(id);
    } else {
      return;
    }
    migrations_.push_front(std::move(line));
    if (migrations_.size() > kMigrationLines) migrations_.pop_back();
  } else if (type == "balancer" && S(event, "action") == "migrate") {
    migrations_.push_front(Clock(S(event, "time")) + "  " + Pad(S(event, "job"), 12) +
                           " balancer (" + S(event, "kind") + "): " + S(event, "reason"));
    if (migrations_.size() > kMigrationLines) migrations_.pop_back();
  }
}

std::string TopModel::Render(std::size_t width, std::size_t height,
                             const std::string& clock) const {
  width = std::max<std::size_t>(width, 40);
  std::vector<std::string> lines;
  std::size_t running = 0;
  for (const auto& [id, job] : jobs_) running += S(job, "state") == "running" ? 1 : 0;
  lines.push_back(Pad("tern top - " + std::to_string(nodes_.size()) + " nodes, " +
                          std::to_string(running) + " jobs running   " + clock + "   (q quits)",
                      width));
  lines.push_back(status_.empty() ? "" : "! " + status_);
  const std::size_t bar = width >= 100 ? 30 : 16;
  lines.push_back(Pad("NODE", 10) + Pad("STATE", 8) + Pad("LOAD", 6) + Pad("CPU demand", bar + 3) +
                  Pad(" DEMAND/CAP", 12) + Pad("MEM", 14) + "JOBS");
  for (const auto& [name, node] : nodes_) {
    const double capacity = D(node, "capacity") > 0 ? D(node, "capacity") : D(node, "cpus");
    const double demand = D(node, "demand");
    const double fraction = capacity > 0 ? demand / capacity : 0;
    std::string state = S(node, "state");
    if (const auto draining = node.find("draining");
        draining != node.end() && draining->is_boolean() && draining->get<bool>()) {
      state += "/dr";
    }
    lines.push_back(
        Pad(name, 10) + Pad(state, 8) + Pad(Fixed(D(node, "load"), 2), 6) + Bar(fraction, bar) +
        " " + Pad(" " + Fixed(demand, 1) + "/" + Fixed(capacity, 1), 12) +
        Pad(Bytes(D(node, "mem_used_bytes")) + "/" + Bytes(D(node, "mem_limit_bytes")), 14) +
        std::to_string(static_cast<long>(D(node, "jobs"))));
  }
  lines.push_back("");
  lines.push_back(Pad("JOB", 14) + Pad("NAME", 14) + Pad("NODE", 10) + Pad("STATE", 10) +
                  Pad("CPU s", 9) + "RSS");
  std::vector<std::string> job_lines;
  for (const auto& [id, job] : jobs_) {
    if (S(job, "state") != "running") continue;
    job_lines.push_back(Pad(id, 14) + Pad(S(job, "name"), 14) + Pad(S(job, "node"), 10) +
                        Pad(S(job, "state"), 10) + Pad(Fixed(D(job, "cpu_seconds"), 1), 9) +
                        Bytes(D(job, "rss_bytes")));
  }
  const std::size_t room_for_jobs =
      height > lines.size() + kMigrationLines + 3 ? height - lines.size() - kMigrationLines - 3 : 3;
  for (std::size_t i = 0; i < job_lines.size() && i < room_for_jobs; ++i) {
    lines.push_back(job_lines[i]);
  }
  if (job_lines.size() > room_for_jobs) {
    lines.push_back("... " + std::to_string(job_lines.size() - room_for_jobs) + " more");
  }
  lines.push_back("");
  lines.push_back("MIGRATIONS (newest first)");
  for (const auto& line : migrations_) lines.push_back(line);
  if (migrations_.empty()) lines.push_back("(none yet)");
  std::string out;
  for (std::size_t i = 0; i < lines.size() && i < height; ++i) {
    out += (lines[i].size() > width ? lines[i].substr(0, width) : lines[i]) + "\n";
  }
  return out;
}

namespace {

// Raw keyboard input for the life of the view; the terminal is restored on every way out.
class RawTerminal {
 public:
  RawTerminal() {
    if (::tcgetattr(STDIN_FILENO, &saved_) != 0) return;
    termios raw = saved_;
    raw.c_lflag &= static_cast<tcflag_t>(~(ICANON | ECHO));
    raw.c_cc[VMIN] = 0;
    raw.c_cc[VTIME] = 0;
    active_ = ::tcsetattr(STDIN_FILENO, TCSANOW, &raw) == 0;
    std::cout << "\033[?1049h\033[?25l" << std::flush;  // alternate screen, no cursor
  }
  ~RawTerminal() {
    std::cout << "\033[?25h\033[?1049l" << std::flush;
    if (active_) ::tcsetattr(STDIN_FILENO, TCSANOW, &saved_);
  }
  RawTerminal(const RawTerminal&) = delete;
  RawTerminal& operator=(const RawTerminal&) = delete;

 private:
  termios saved_{};
  bool active_ = false;
};

std::atomic<bool> interrupted{false};

std::string NowClock() {
  const std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  char text[16];
  std::strftime(text, sizeof text, "%H:%M:%S", &local);
  return text;
}

}  // namespace

int Top(Context& context) {
  if (::isatty(STDOUT_FILENO) != 1 || ::isatty(STDIN_FILENO) != 1) {
    context.err << "tern: top needs a terminal (use `tern events -f` or `tern nodes -w` in "
                   "scripts)\n";
    return 1;
  }
  std::mutex mutex;
  TopModel model;
  std::atomic<bool> dirty{true};
  auto refresh = [&] {
    auto nodes = context.client.Request("GET", "/v1/nodes");
    auto jobs = context.client.Request("GET", "/v1/jobs");
    std::lock_guard lock(mutex);
    if (!nodes || !nodes->ok()) {
      model.SetStatus(nodes ? nodes->ErrorMessage() : nodes.error().message);
    } else {
      model.SetStatus("");
      model.SetNodes(nlohmann::json::parse(nodes->body, nullptr, false).value("nodes", json()));
    }
    if (jobs && jobs->ok()) {
      model.SetJobs(nlohmann::json::parse(jobs->body, nullptr, false).value("jobs", json()));
    }
    dirty = true;
  };
  refresh();
  // The event stream runs on its own thread for the life of the process (it blocks in a read).
  std::thread([&context, &mutex, &model, &dirty] {
    (void)FollowEvents(
        context.client, true,
        [&](const SseEvent& event) {
          std::lock_guard lock(mutex);
          model.OnEvent(event.data);
          model.SetStatus("");
          dirty = true;
          return true;
        },
        [&](const std::string& why) {
          std::lock_guard lock(mutex);
          model.SetStatus("reconnecting: " + why);
          dirty = true;
        });
  }).detach();
  std::signal(SIGINT, [](int) { interrupted = true; });
  std::signal(SIGTERM, [](int) { interrupted = true; });
  {
    RawTerminal terminal;
    auto last_refresh = std::chrono::steady_clock::now();
    std::string clock;
    while (!interrupted) {
      pollfd input{STDIN_FILENO, POLLIN, 0};
      if (::poll(&input, 1, 200) > 0 && (input.revents & POLLIN) != 0) {
        char key = 0;
        if (::read(STDIN_FILENO, &key, 1) == 1 && (key == 'q' || key == 'Q')) break;
      }
      // Loads are not events: the nodes' figures are fetched again every 2 s.
      if (std::chrono::steady_clock::now() - last_refresh > std::chrono::seconds(2)) {
        refresh();
        last_refresh = std::chrono::steady_clock::now();
      }
      if (NowClock() != clock) {
        clock = NowClock();
        dirty = true;
      }
      if (!dirty.exchange(false)) continue;
      winsize size{};
      if (::ioctl(STDOUT_FILENO, TIOCGWINSZ, &size) != 0 || size.ws_col == 0) {
        size.ws_col = 80;
        size.ws_row = 24;
      }
      std::string screen;
      {
        std::lock_guard lock(mutex);
        screen = model.Render(size.ws_col, size.ws_row, clock);
      }
      std::string framed;
      for (char c : screen) framed += c == '\n' ? std::string("\033[K\r\n") : std::string(1, c);
      std::cout << "\033[H" << framed << "\033[J" << std::flush;
    }
  }
  // The stream thread is blocked in a read: leave without waiting for it.
  std::cout.flush();
  std::_Exit(0);
}

}  // namespace tern::cli
