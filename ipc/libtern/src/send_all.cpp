#include "send_all.hpp"

#include <sys/socket.h>
#include <sys/uio.h>

#include <algorithm>
#include <boost/container/small_vector.hpp>
#include <cerrno>
#include <climits>

namespace tern::libtern {

int SendAll(int fd, std::span<const std::string_view> pieces) {
  boost::container::small_vector<iovec, 8> iov;
  for (std::string_view piece : pieces) {
    if (!piece.empty()) iov.push_back({const_cast<char*>(piece.data()), piece.size()});
  }
  std::size_t first = 0;
  while (first < iov.size()) {
    msghdr message{};
    message.msg_iov = iov.data() + first;
    message.msg_iovlen = std::min<std::size_t>(iov.size() - first, IOV_MAX);
    const ssize_t n = ::sendmsg(fd, &message, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    auto written = static_cast<std::size_t>(n);
    while (first < iov.size() && written >= iov[first].iov_len) written -= iov[first++].iov_len;
    if (written > 0) {
      iov[first].iov_base = static_cast<char*>(iov[first].iov_base) + written;
      iov[first].iov_len -= written;
    }
  }
  return 0;
}

}  // namespace tern::libtern
