#include "backlog_hold.hpp"

namespace tern::ipc {

bool BacklogHold::Over(std::uint64_t node, std::size_t limit, bool give_up,
                       std::vector<std::uint64_t>* newly_stuck) {
  const std::size_t bytes = backlog_(node);
  if (stuck_.contains(node)) {
    if (bytes <= kResumeBelow) stuck_.erase(node);
    return false;
  }
  if (bytes <= limit) return false;
  if (!give_up) return true;
  stuck_.insert(node);
  if (newly_stuck) newly_stuck->push_back(node);
  return false;
}

}  // namespace tern::ipc
