/* libtern's C API: the job side of tern IPC (docs/ipc.md), a thin layer over <tern/ipc.hpp>.
 *
 * Contract:
 *  - Every call uses the process's channel (the fd in TERN_IPC_FD, opened on first use; see
 *    tern_use_fd). Calls return 0 (TERN_OK) or a tern_status; the failure's text is then in
 *    tern_last_error() (per thread, valid until the thread's next failing call).
 *  - Outside tern every call fails with TERN_UNAVAILABLE and "not running under tern:
 *    TERN_IPC_FD is not set" (or why the fd is unusable); nothing crashes.
 *  - Memory libtern returns (messages, regions, RPC replies, servers) is freed with its own
 *    tern_*_free / tern_region_unmap / tern_rpc_server_stop function.
 *  - Timeouts are milliseconds; TERN_WAIT_FOREVER waits without limit.
 *
 * Thread-safety: all functions may be called from any number of threads at once; a
 * tern_message or tern_region belongs to one thread at a time.
 */
#ifndef TERN_IPC_H_
#define TERN_IPC_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TERN_WAIT_FOREVER 0xffffffffu

/* Numbers are the wire's JobStatus (job_wire.hpp). */
typedef enum tern_status {
  TERN_OK = 0,
  TERN_INVALID_NAME = 1,
  TERN_DEAD_NAME = 2,
  TERN_QUEUE_FULL = 3,
  TERN_TIMED_OUT = 4,
  TERN_ALREADY_MATCHED = 5,
  TERN_LINK_BROKEN = 6,
  TERN_NOT_FOUND = 7,
  TERN_BAD_REQUEST = 8,
  TERN_UNAVAILABLE = 9, /* also: no channel (not under tern) or the agent closed it */
  TERN_TOO_LARGE = 10,
  TERN_CANCELLED = 11,
  TERN_EXISTS = 12,
  TERN_OVER_QUOTA =
      13 /* over a per-job limit of the agent's [ipc] config; the message says which */
} tern_status;

typedef enum tern_disposition {
  TERN_DISP_NONE = 0,
  TERN_DISP_MOVE_RECEIVE = 1,
  TERN_DISP_MOVE_SEND = 2,
  TERN_DISP_COPY_SEND = 3,
  TERN_DISP_MAKE_SEND = 4,
  TERN_DISP_MOVE_SEND_ONCE = 5,
  TERN_DISP_MAKE_SEND_ONCE = 6,
  TERN_DISP_MOVE_LINK_END = 7,
  TERN_DISP_COPY_REGION = 8,
  TERN_DISP_MOVE_REGION = 9
} tern_disposition;

typedef enum tern_full_policy {
  TERN_FULL_FAIL = 0,
  TERN_FULL_WAIT = 1,
  TERN_FULL_NOTIFY = 2
} tern_full_policy;

typedef enum tern_notification_kind {
  TERN_NOTIFY_DEAD_NAME = 1,
  TERN_NOTIFY_NO_SENDERS = 2,
  TERN_NOTIFY_PORT_DESTROYED = 3
} tern_notification_kind;

typedef enum tern_item_kind {
  TERN_ITEM_BYTES = 1,
  TERN_ITEM_PORT = 2,
  TERN_ITEM_OOL = 3,
  TERN_ITEM_LINK_END = 4,
  TERN_ITEM_REGION = 5
} tern_item_kind;

/* One item of a message. Bytes/OOL: data + size. Rights: name + disposition. In a received
 * message, data points into the message and lives as long as it. */
typedef struct tern_item {
  int kind; /* tern_item_kind */
  const void* data;
  size_t size;
  uint32_t name;
  int disposition; /* tern_disposition */
} tern_item;

typedef struct tern_right_info {
  int type; /* 0 none, 1 receive, 2 send, 3 send-once, 4 dead name, 5 link end, 6 region */
  uint32_t refs;
  uint64_t port_home;
  uint64_t serial;
} tern_right_info;

typedef struct tern_port_status {
  uint32_t queued;
  uint32_t limit;
  uint32_t send_refs;
} tern_port_status;

typedef struct tern_message tern_message; /* a received message */
typedef struct tern_region tern_region;   /* a mapped region */
typedef struct tern_rpc_server tern_rpc_server;

/* Errors. */
const char* tern_strerror(int status); /* "queue_full", ... */
const char* tern_last_error(void);     /* the calling thread's last failure text */
/* Uses `fd` (owned from now on) as the process's channel instead of TERN_IPC_FD. */
int tern_use_fd(int fd);

/* Ports and rights. queue_limit 0: the default (64). */
int tern_port_allocate(uint32_t queue_limit, uint32_t* name);
int tern_make_send(uint32_t receive_name, uint32_t* send_name);
int tern_deallocate(uint32_t name);
int tern_get_right_info(uint32_t name, tern_right_info* info);
int tern_get_port_status(uint32_t receive_name, tern_port_status* status);
int tern_request_notification(uint32_t name, int kind, uint32_t notify_port);

/* Messages. The destination is copied (a send right) unless the disposition says otherwise.
 * timeout_ms applies to TERN_FULL_WAIT, notify_port to TERN_FULL_NOTIFY. */
int tern_send(uint32_t destination, int destination_disposition, uint32_t reply,
              int reply_disposition, uint32_t id, const tern_item* items, size_t count, int policy,
              uint32_t timeout_ms, uint32_t notify_port);
int tern_send_bytes(uint32_t destination, uint32_t id, const void* data, size_t size, int policy,
                    uint32_t timeout_ms);
int tern_receive(uint32_t port, uint32_t timeout_ms, tern_message** message);

/* A received message (also a completed link receive). */
uint32_t tern_message_id(const tern_message* message);
uint32_t tern_message_destination(const tern_message* message); /* port or link end */
uint32_t tern_message_reply(const tern_message* message);       /* 0: no reply right */
size_t tern_message_item_count(const tern_message* message);
int tern_message_item(const tern_message* message, size_t index, tern_item* item);
void tern_message_free(tern_message* message);

/* Names. */
int tern_name_register(const char* name, uint32_t right);
int tern_name_lookup(const char* name, uint32_t* send_name);
int tern_name_unregister(const char* name);

/* Links: sends and receives return an operation handle at once. */
int tern_link_create(uint32_t* first, uint32_t* second);
int tern_link_send(uint32_t end, uint32_t id, const tern_item* items, size_t count,
                   uint32_t* handle);
int tern_link_send_bytes(uint32_t end, uint32_t id, const void* data, size_t size,
                         uint32_t* handle);
int tern_link_receive(uint32_t end, uint32_t* handle); /* end 0: any end the job holds */
/* A completed receive sets *message (free it); a completed send sets it to NULL. `message`
 * may be NULL when the caller does not want it. */
int tern_op_wait(uint32_t handle, uint32_t timeout_ms, tern_message** message);
int tern_op_poll(uint32_t handle, int* done, tern_message** message);
int tern_op_cancel(uint32_t handle); /* TERN_ALREADY_MATCHED once matched */

/* Regions. */
int tern_region_create(uint64_t size, uint32_t* name);
int tern_region_map(uint32_t name, tern_region** region);
void* tern_region_data(const tern_region* region);
size_t tern_region_size(const tern_region* region);
void tern_region_unmap(tern_region* region);

/* RPC. tern_call sends `request` and waits for the reply, returned in a buffer to release
 * with tern_free. */
int tern_call(uint32_t port, const void* request, size_t size, uint32_t timeout_ms, void** reply,
              size_t* reply_size);
void tern_free(void* buffer);

/* Fills the reply: *reply = malloc'd bytes (or NULL), *reply_size. Returns 0, or non-zero to
 * report a failure (the client's tern_call then fails with TERN_BAD_REQUEST). */
typedef int (*tern_rpc_handler)(void* context, const void* request, size_t size, void** reply,
                                size_t* reply_size);
enum { TERN_RPC_ACK_EXPLICIT = 0, TERN_RPC_ACK_IMPLICIT = 1 };
int tern_rpc_server_start(uint32_t port, tern_rpc_handler handler, void* context, int threads,
                          int ack, tern_rpc_server** server);
size_t tern_rpc_server_kept_replies(const tern_rpc_server* server);
void tern_rpc_server_stop(tern_rpc_server* server); /* stops, joins and frees */

/* Streams (tern::PortWriter / tern::PortReader in <tern/ipc.hpp>). A writer gathers messages
 * of one bytes item to `port` into trains, several on their way at once, and waits while the
 * port's queue is full (nothing is dropped); a refusal ends the stream and every later call
 * returns it. A reader takes what is queued on a receive right in batches and hands messages
 * out in place. A writer or a reader belongs to one thread at a time. */
typedef struct tern_writer tern_writer;
typedef struct tern_reader tern_reader;
int tern_writer_open(uint32_t port, tern_writer** writer);
int tern_writer_write(tern_writer* writer, uint32_t id, const void* data, size_t size);
int tern_writer_flush(tern_writer* writer); /* sends the rest, waits for every answer */
uint64_t tern_writer_accepted(const tern_writer* writer);
int tern_writer_close(tern_writer* writer); /* flushes and frees; the flush's status */
int tern_reader_open(uint32_t port, uint32_t batch, tern_reader** reader); /* batch 0: 1024 */
/* The next message: its id, its first data item (valid until the reader's next call) and its
 * reply right's name (0: none; may be NULL). */
int tern_reader_next(tern_reader* reader, uint32_t timeout_ms, uint32_t* id, const void** data,
                     size_t* size, uint32_t* reply);
void tern_reader_close(tern_reader* reader); /* messages taken and not handed out are lost */

#ifdef __cplusplus
}
#endif

#endif /* TERN_IPC_H_ */
