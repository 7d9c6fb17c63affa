#include "tern/http/responder.hpp"

#include <spdlog/spdlog.h>

#include "tern/http/server.hpp"

namespace tern::http {

Responder::Responder(Deliver deliver) : state_(std::make_shared<State>(std::move(deliver))) {}

void Responder::Send(Response response) const {
  if (state_->sent.exchange(true)) {
    spdlog::error("http: a second answer to one request was dropped (status {})",
                  response.result_int());
    return;
  }
  state_->deliver(std::move(response));
}

Responder::State::~State() {
  if (!sent.load()) deliver(ErrorResponse(500, "the request was dropped without an answer"));
}

}  // namespace tern::http
