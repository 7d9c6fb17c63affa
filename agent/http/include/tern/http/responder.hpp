// Responder: how a request handler answers — now or later, from any thread. Copies share one
// answer: the first Send() is written to the connection, later ones are dropped and logged.
// A Responder that is destroyed without an answer makes the server answer 500, so a request
// is never left hanging.
//
// Thread-safety: Send() may be called from any thread.
#pragma once

#include <atomic>
#include <functional>
#include <memory>

#include "tern/http/types.hpp"

namespace tern::http {

class Responder {
 public:
  using Deliver = std::function<void(Response)>;

  explicit Responder(Deliver deliver);
  void Send(Response response) const;

 private:
  struct State {
    explicit State(Deliver deliver) : deliver(std::move(deliver)) {}
    ~State();
    Deliver deliver;
    std::atomic<bool> sent{false};
  };
  std::shared_ptr<State> state_;
};

}  // namespace tern::http
