// FdControl: the control message that passes one descriptor with a sendmsg (SCM_RIGHTS), so
// that each sender does not spell out the cmsg layout again. The descriptor goes with the
// message's first byte; the caller keeps its own copy open until the call returns.
//
// Thread-safety: a value; one per sendmsg call.
#pragma once

#include <sys/socket.h>

#include <cstring>

namespace tern {

class FdControl {
 public:
  explicit FdControl(int fd) {
    cmsghdr header{};
    header.cmsg_level = SOL_SOCKET;
    header.cmsg_type = SCM_RIGHTS;
    header.cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(buffer_, &header, sizeof header);
    std::memcpy(CMSG_DATA(reinterpret_cast<cmsghdr*>(buffer_)), &fd, sizeof fd);
  }
  FdControl(const FdControl&) = delete;
  FdControl& operator=(const FdControl&) = delete;

  // Points `message`'s control fields at this one; it must outlive the sendmsg.
  void AttachTo(msghdr& message) {
    message.msg_control = buffer_;
    message.msg_controllen = sizeof buffer_;
  }

 private:
  alignas(cmsghdr) char buffer_[CMSG_SPACE(sizeof(int))] = {};
};

}  // namespace tern
