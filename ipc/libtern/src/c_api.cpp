// The C API (<tern/ipc.h>) over the C++ one: converts types and keeps the last error text.
#include <tern/ipc.h>

#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <tern/ipc.hpp>

struct tern_message {
  tern::Message message;
};

struct tern_region {
  tern::Region region;
};

struct tern_rpc_server {
  std::unique_ptr<tern::RpcServer> server;
};

struct tern_writer {
  explicit tern_writer(uint32_t port) : writer(tern::Channel(), port) {}
  tern::PortWriter writer;
};

struct tern_reader {
  tern_reader(uint32_t port, uint32_t batch) : reader(tern::Channel(), port, batch) {}
  tern::PortReader reader;
  tern::MessageView message;
};

namespace {

thread_local std::string last_error;

int Failed(const tern::IpcError& error) {
  last_error = error.message;
  return static_cast<int>(error.status);
}

int Invalid(const char* what) {
  last_error = what;
  return TERN_BAD_REQUEST;
}

template <typename T>
int Status(const tern::IpcResult<T>& result) {
  return result ? TERN_OK : Failed(result.error());
}

tern::Timeout Ms(std::uint32_t timeout_ms) {
  return timeout_ms == TERN_WAIT_FOREVER ? tern::kForever : tern::Timeout(timeout_ms);
}

std::vector<tern::Item> Items(const tern_item* items, size_t count) {
  std::vector<tern::Item> out;
  out.reserve(count);
  for (size_t i = 0; i < count; ++i) {
    const tern_item& item = items[i];
    const std::string data(static_cast<const char*>(item.data), item.data ? item.size : 0);
    switch (item.kind) {
      case TERN_ITEM_BYTES:
        out.push_back(tern::Item::Bytes(data));
        break;
      case TERN_ITEM_OOL:
        out.push_back(tern::Item::OutOfLine(data));
        break;
      default:
        out.push_back(
            tern::Item::Port(item.name, static_cast<tern::Disposition>(item.disposition)));
    }
  }
  return out;
}

tern_message* NewMessage(tern::Message message) {
  return std::make_unique<tern_message>(tern_message{std::move(message)}).release();
}

int Name(tern::IpcResult<std::uint32_t> result, uint32_t* name) {
  if (!result) return Failed(result.error());
  if (name) *name = *result;
  return TERN_OK;
}

}  // namespace

extern "C" {

const char* tern_strerror(int status) {
  static thread_local std::string text;
  text = tern::ipc::JobStatusName(static_cast<tern::JobStatus>(status));
  return text.c_str();
}

const char* tern_last_error(void) { return last_error.c_str(); }

int tern_use_fd(int fd) {
  tern::Channel::SetDefault(tern::Channel::FromFd(fd));
  return TERN_OK;
}

int tern_port_allocate(uint32_t queue_limit, uint32_t* name) {
  return Name(tern::Channel().port_allocate(queue_limit), name);
}

int tern_make_send(uint32_t receive_name, uint32_t* send_name) {
  return Name(tern::Channel().make_send(receive_name), send_name);
}

int tern_deallocate(uint32_t name) { return Status(tern::Channel().deallocate(name)); }

int tern_get_right_info(uint32_t name, tern_right_info* info) {
  auto result = tern::Channel().right_info(name);
  if (!result) return Failed(result.error());
  if (info) {
    *info = tern_right_info{static_cast<int>(result->type), result->refs, result->port_home,
                            result->serial};
  }
  return TERN_OK;
}

int tern_get_port_status(uint32_t receive_name, tern_port_status* status) {
  auto result = tern::Channel().port_status(receive_name);
  if (!result) return Failed(result.error());
  if (status) *status = tern_port_status{result->queued, result->limit, result->send_refs};
  return TERN_OK;
}

int tern_request_notification(uint32_t name, int kind, uint32_t notify_port) {
  return Status(tern::Channel().request_notification(
      name, static_cast<tern::NotificationKind>(kind), notify_port));
}

int tern_send(uint32_t destination, int destination_disposition, uint32_t reply,
              int reply_disposition, uint32_t id, const tern_item* items, size_t count, int policy,
              uint32_t timeout_ms, uint32_t notify_port) {
  if (count > 0 && items == nullptr) return Invalid("items is NULL");
  tern::Message message;
  message.destination = destination;
  message.destination_disposition = static_cast<tern::Disposition>(destination_disposition);
  message.reply = reply;
  message.reply_disposition = static_cast<tern::Disposition>(reply_disposition);
  message.id = id;
  message.items = Items(items, count);
  return Status(tern::Channel().send(message, static_cast<tern::FullPolicy>(policy), Ms(timeout_ms),
                                     notify_port));
}

int tern_send_bytes(uint32_t destination, uint32_t id, const void* data, size_t size, int policy,
                    uint32_t timeout_ms) {
  const tern_item item{TERN_ITEM_BYTES, data, size, 0, 0};
  return tern_send(destination, TERN_DISP_COPY_SEND, 0, TERN_DISP_NONE, id, &item, 1, policy,
                   timeout_ms, 0);
}

int tern_receive(uint32_t port, uint32_t timeout_ms, tern_message** message) {
  if (message == nullptr) return Invalid("message is NULL");
  auto result = tern::Channel().receive(port, Ms(timeout_ms));
  if (!result) return Failed(result.error());
  *message = NewMessage(std::move(*result));
  return TERN_OK;
}

uint32_t tern_message_id(const tern_message* message) { return message->message.id; }
uint32_t tern_message_destination(const tern_message* message) {
  return message->message.destination;
}
uint32_t tern_message_reply(const tern_message* message) { return message->message.reply; }
size_t tern_message_item_count(const tern_message* message) {
  return message->message.items.size();
}

int tern_message_item(const tern_message* message, size_t index, tern_item* item) {
  if (message == nullptr || item == nullptr || index >= message->message.items.size()) {
    return Invalid("no such item");
  }
  const tern::Item& source = message->message.items[index];
  const std::string_view bytes = source.bytes();
  *item = tern_item{static_cast<int>(source.kind), bytes.data(), bytes.size(), source.name,
                    static_cast<int>(source.disposition)};
  return TERN_OK;
}

void tern_message_free(tern_message* message) { std::unique_ptr<tern_message> owned(message); }

int tern_name_register(const char* name, uint32_t right) {
  if (name == nullptr) return Invalid("name is NULL");
  return Status(tern::Channel().name_register(name, right));
}

int tern_name_lookup(const char* name, uint32_t* send_name) {
  if (name == nullptr) return Invalid("name is NULL");
  return Name(tern::Channel().name_lookup(name), send_name);
}

int tern_name_unregister(const char* name) {
  if (name == nullptr) return Invalid("name is NULL");
  return Status(tern::Channel().name_unregister(name));
}

int tern_link_create(uint32_t* first, uint32_t* second) {
  auto result = tern::Channel().link_create();
  if (!result) return Failed(result.error());
  if (first) *first = result->first;
  if (second) *second = result->second;
  return TERN_OK;
}

int tern_link_send(uint32_t end, uint32_t id, const tern_item* items, size_t count,
                   uint32_t* handle) {
  if (count > 0 && items == nullptr) return Invalid("items is NULL");
  tern::Message message;
  message.id = id;
  message.items = Items(items, count);
  return Name(tern::Channel().link_send(end, message), handle);
}

int tern_link_send_bytes(uint32_t end, uint32_t id, const void* data, size_t size,
                         uint32_t* handle) {
  const tern_item item{TERN_ITEM_BYTES, data, size, 0, 0};
  return tern_link_send(end, id, &item, 1, handle);
}

int tern_link_receive(uint32_t end, uint32_t* handle) {
  return Name(tern::Channel().link_receive(end), handle);
}

int tern_op_wait(uint32_t handle, uint32_t timeout_ms, tern_message** message) {
  auto result = tern::Channel().wait(handle, Ms(timeout_ms));
  if (!result) return Failed(result.error());
  if (message) *message = result->is_receive ? NewMessage(std::move(result->message)) : nullptr;
  return TERN_OK;
}

int tern_op_poll(uint32_t handle, int* done, tern_message** message) {
  auto result = tern::Channel().poll(handle);
  if (!result) return Failed(result.error());
  if (done) *done = result->has_value() ? 1 : 0;
  if (message) {
    *message = result->has_value() && (*result)->is_receive
                   ? NewMessage(std::move((*result)->message))
                   : nullptr;
  }
  return TERN_OK;
}

int tern_op_cancel(uint32_t handle) { return Status(tern::Channel().cancel(handle)); }

int tern_region_create(uint64_t size, uint32_t* name) {
  return Name(tern::Channel().region_create(size), name);
}

int tern_region_map(uint32_t name, tern_region** region) {
  if (region == nullptr) return Invalid("region is NULL");
  auto result = tern::Channel().region_map(name);
  if (!result) return Failed(result.error());
  *region = std::make_unique<tern_region>(tern_region{std::move(*result)}).release();
  return TERN_OK;
}

void* tern_region_data(const tern_region* region) { return region->region.data(); }
size_t tern_region_size(const tern_region* region) { return region->region.size(); }
void tern_region_unmap(tern_region* region) { std::unique_ptr<tern_region> owned(region); }

int tern_call(uint32_t port, const void* request, size_t size, uint32_t timeout_ms, void** reply,
              size_t* reply_size) {
  if (reply == nullptr || reply_size == nullptr) return Invalid("reply is NULL");
  const std::string_view bytes(static_cast<const char*>(request), request ? size : 0);
  tern::CallOptions options;
  options.timeout = Ms(timeout_ms);
  auto result = tern::Channel().call(port, bytes, options);
  if (!result) return Failed(result.error());
  *reply_size = result->size();
  // malloc, not new: C callers free it with tern_free, which is free().
  *reply = std::malloc(result->empty() ? 1 : result->size());
  if (*reply == nullptr) return Invalid("out of memory");
  std::memcpy(*reply, result->data(), result->size());
  return TERN_OK;
}

void tern_free(void* buffer) { std::free(buffer); }

int tern_rpc_server_start(uint32_t port, tern_rpc_handler handler, void* context, int threads,
                          int ack, tern_rpc_server** server) {
  if (handler == nullptr || server == nullptr) return Invalid("handler or server is NULL");
  tern::RpcServerOptions options;
  options.threads = threads;
  options.ack = ack == TERN_RPC_ACK_IMPLICIT ? tern::RpcAck::kImplicit : tern::RpcAck::kExplicit;
  auto serve = [handler, context](const tern::RpcRequest& request) {
    const std::string_view bytes = request.bytes();
    void* reply = nullptr;
    size_t reply_size = 0;
    const int failed = handler(context, bytes.data(), bytes.size(), &reply, &reply_size);
    std::string data(static_cast<const char*>(reply), reply ? reply_size : 0);
    std::free(reply);
    // RpcServer turns the exception into a failure reply for the client.
    if (failed != 0) throw std::runtime_error("handler returned " + std::to_string(failed));
    return std::vector<tern::Item>{tern::Item::Bytes(std::move(data))};
  };
  *server =
      std::make_unique<tern_rpc_server>(tern_rpc_server{std::make_unique<tern::RpcServer>(
                                            tern::Channel(), port, std::move(serve), options)})
          .release();
  return TERN_OK;
}

size_t tern_rpc_server_kept_replies(const tern_rpc_server* server) {
  return server->server->kept_replies();
}

void tern_rpc_server_stop(tern_rpc_server* server) {
  std::unique_ptr<tern_rpc_server> owned(server);
}

int tern_writer_open(uint32_t port, tern_writer** writer) {
  if (writer == nullptr) return Invalid("writer is NULL");
  *writer = std::make_unique<tern_writer>(port).release();
  return TERN_OK;
}

int tern_writer_write(tern_writer* writer, uint32_t id, const void* data, size_t size) {
  if (writer == nullptr || (data == nullptr && size > 0)) return Invalid("writer or data is NULL");
  return Status(
      writer->writer.write(std::string_view(static_cast<const char*>(data), data ? size : 0), id));
}

int tern_writer_flush(tern_writer* writer) {
  if (writer == nullptr) return Invalid("writer is NULL");
  return Status(writer->writer.flush());
}

uint64_t tern_writer_accepted(const tern_writer* writer) {
  return writer ? writer->writer.accepted() : 0;
}

int tern_writer_close(tern_writer* writer) {
  if (writer == nullptr) return TERN_OK;
  std::unique_ptr<tern_writer> owned(writer);
  return Status(owned->writer.flush());
}

int tern_reader_open(uint32_t port, uint32_t batch, tern_reader** reader) {
  if (reader == nullptr) return Invalid("reader is NULL");
  *reader = std::make_unique<tern_reader>(port, batch == 0 ? 1024 : batch).release();
  return TERN_OK;
}

int tern_reader_next(tern_reader* reader, uint32_t timeout_ms, uint32_t* id, const void** data,
                     size_t* size, uint32_t* reply) {
  if (reader == nullptr || id == nullptr || data == nullptr || size == nullptr) {
    return Invalid("reader, id, data or size is NULL");
  }
  auto next = reader->reader.next(reader->message, Ms(timeout_ms));
  if (!next) return Failed(next.error());
  const std::string_view bytes = reader->message.bytes();
  *id = reader->message.id;
  *data = bytes.data();
  *size = bytes.size();
  if (reply) *reply = reader->message.reply;
  return TERN_OK;
}

void tern_reader_close(tern_reader* reader) { std::unique_ptr<tern_reader> owned(reader); }

}  // extern "C"
