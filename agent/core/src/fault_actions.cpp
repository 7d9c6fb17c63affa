#include "fault_actions.hpp"

#include <fcntl.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <boost/asio/steady_timer.hpp>
#include <memory>
#include <tern/unique_fd.hpp>

#include "link_cut.hpp"

namespace tern::agent {

void PerformFault(const FaultHit& hit, const std::string& state_dir, boost::asio::io_context& io) {
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
  if (auto cut = ApplyLinkCut(); !cut) {
    spdlog::error("fault: cannot cut the links: {}", cut.error().message);
    return;
  }
  auto timer = std::make_shared<boost::asio::steady_timer>(io, hit.plan.cut_for);
  timer->async_wait([timer](const boost::system::error_code&) {
    if (auto lifted = LiftLinkCut(); !lifted) {
      spdlog::error("fault: cannot lift the link cut: {}", lifted.error().message);
    } else {
      spdlog::warn("fault: link cut lifted");
    }
  });
}

}  // namespace tern::agent
