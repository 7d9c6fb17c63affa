#include "tern/http/responder.hpp"

#include <spdlog/spdlog.h>

#include "tern/http/server.hpp"

namespace tern::http {

Responder::Responder(Deliver deliver, OpenStream open_stream)
    : state_(std::make_shared<State>(std::move(deliver), std::move(open_stream))) {}

std::shared_ptr<EventStream> Responder::StartEventStream() const {
  if (!state_->open_stream || state_->sent.exchange(true)) return nullptr;
  return state_->open_stream();
}

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
