#include "fault_actions.hpp"

#include <fcntl.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <boost/asio/steady_timer.hpp>
#include <cstdio>
#include <memory>
#include <tern/unique_fd.hpp>

#include "link_cut.hpp"
#include "link_degrade.hpp"

namespace tern::agent {

namespace {

constexpr std::size_t kMaxArmedFileBytes = 64 * 1024;
constexpr const char* kArmedFile = "/faults-armed.json";

}  // namespace

void SaveArmedFaults(const std::vector<FaultPlan>& armed, const std::string& state_dir) {
  nlohmann::json list = nlohmann::json::array();
  for (const auto& plan : armed) list.push_back(plan.ToJson());
  const std::string text = list.dump() + "\n";
  const std::string path = state_dir + kArmedFile;
  const std::string temporary = path + ".tmp";
  UniqueFd file(
      ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!file.valid() ||
      ::write(file.get(), text.data(), text.size()) != static_cast<ssize_t>(text.size()) ||
      ::fsync(file.get()) != 0 || ::rename(temporary.c_str(), path.c_str()) != 0) {
    spdlog::error("fault: cannot record the armed faults in {}", path);
  }
}

std::vector<FaultPlan> LoadArmedFaults(const std::string& state_dir) {
  const std::string path = state_dir + kArmedFile;
  UniqueFd file(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK));
  if (!file.valid()) return {};
  std::string text(kMaxArmedFileBytes + 1, '\0');
  const ssize_t got = ::read(file.get(), text.data(), text.size());
  if (got < 0 || static_cast<std::size_t>(got) > kMaxArmedFileBytes) {
    spdlog::error("fault: {} is unreadable or too long; nothing armed", path);
    return {};
  }
  text.resize(static_cast<std::size_t>(got));
  const auto body = nlohmann::json::parse(text, nullptr, false);
  if (body.is_array() && body.empty()) return {};
  auto plans = FaultPlan::ListFromJson(body);
  if (!plans) {
    spdlog::error("fault: {} is not a list of faults ({}); nothing armed", path,
                  plans.error().message);
    return {};
  }
  spdlog::warn("fault: {} armed fault(s) kept from before the restart", plans->size());
  return std::move(*plans);
}

void LiftLeftoverLinkFaults(const std::string& link_address) {
  for (auto lifted : {LiftLinkCut(), LiftLinkLoss(), LiftLinkRate(link_address)}) {
    if (!lifted)
      spdlog::error("fault: cannot lift a link fault left over: {}", lifted.error().message);
  }
}

void PerformFault(const FaultHit& hit, const std::string& state_dir,
                  const std::string& link_address, boost::asio::io_context& io) {
  const std::string line = hit.ToJson().dump() + "\n";
  UniqueFd log(::open((state_dir + "/fault-hits.log").c_str(),
                      O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!log.valid() ||
      ::write(log.get(), line.data(), line.size()) != static_cast<ssize_t>(line.size()) ||
      ::fsync(log.get()) != 0) {
    spdlog::error("fault: cannot record the hit in {}/fault-hits.log", state_dir);
  }
  spdlog::warn("fault: {} at {} of move {} of job {}", ToString(hit.plan.action), hit.plan.phase,
               hit.migration, hit.job);
  if (hit.plan.action == FaultAction::kKillAgent) {
    ::kill(::getpid(), SIGKILL);
    return;
  }
  if (hit.plan.action == FaultAction::kLoseMessages) return;  // the hook's owner drops them
  if (hit.plan.action == FaultAction::kCutLinks) {
    if (auto cut = ApplyLinkCut(); !cut) {
      spdlog::error("fault: cannot cut the links: {}", cut.error().message);
      return;
    }
  } else {
    if (hit.plan.loss_pct != 0) {
      if (auto loss = ApplyLinkLoss(hit.plan.loss_pct); !loss) {
        spdlog::error("fault: cannot make the links lose packets: {}", loss.error().message);
      }
    }
    if (hit.plan.rate_kbit != 0) {
      if (auto rate = ApplyLinkRate(link_address, hit.plan.rate_kbit); !rate) {
        spdlog::error("fault: cannot cap the link's rate: {}", rate.error().message);
      }
    }
  }
  auto timer = std::make_shared<boost::asio::steady_timer>(io, hit.plan.lasts_for);
  timer->async_wait([timer, plan = hit.plan, link_address](const boost::system::error_code&) {
    // Everything is lifted whatever was applied: a lift of what is not there is harmless.
    Expected<void> lifted{};
    if (plan.action == FaultAction::kCutLinks) {
      lifted = LiftLinkCut();
    } else {
      lifted = LiftLinkLoss();
      if (plan.rate_kbit != 0) {
        if (auto rate = LiftLinkRate(link_address); !rate) lifted = rate;
      }
    }
    if (!lifted) {
      spdlog::error("fault: cannot lift the {}: {}", ToString(plan.action), lifted.error().message);
    } else {
      spdlog::warn("fault: {} lifted", ToString(plan.action));
    }
  });
}

}  // namespace tern::agent
