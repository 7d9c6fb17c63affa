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
#include <string_view>

#include "tern/http/types.hpp"

namespace tern::http {

// A server-sent-events stream (text/event-stream) kept open on a connection. Send() queues one
// event and returns false once the client has gone; the connection closes when the last
// reference to the stream is dropped or the client leaves. A non-empty `id` is sent as the
// event's `id:` line (the browser sends the last one back as Last-Event-ID when it reconnects).
class EventStream {
 public:
  virtual ~EventStream() = default;
  virtual bool Send(std::string_view event, std::string_view data, std::string_view id) = 0;
  bool Send(std::string_view event, std::string_view data) { return Send(event, data, {}); }
  virtual bool IsOpen() const = 0;
};

class Responder {
 public:
  using Deliver = std::function<void(Response)>;
  using OpenStream = std::function<std::shared_ptr<EventStream>()>;

  explicit Responder(Deliver deliver, OpenStream open_stream = nullptr);
  void Send(Response response) const;
  // Answers with an event stream instead of one response (nullptr if the transport cannot).
  std::shared_ptr<EventStream> StartEventStream() const;

 private:
  struct State {
    State(Deliver deliver, OpenStream open_stream)
        : deliver(std::move(deliver)), open_stream(std::move(open_stream)) {}
    ~State();
    Deliver deliver;
    OpenStream open_stream;
    std::atomic<bool> sent{false};
  };
  std::shared_ptr<State> state_;
};

}  // namespace tern::http
