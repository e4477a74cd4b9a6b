// unix-socket: a connected AF_UNIX stream socket pair, one write(2) per message (each visible at
// once), blocking, buffered reads.
#include "kernel_io.h"

typedef struct {
    const CShmBench_params *p;
    int socket;
    bench_reader receive;
} unix_socket_ctx;

static int unix_socket_open(unix_socket_ctx *context, const CShmBench_params *p) {
    context->p = p;
    context->socket = p->fds[p->role == 0 ? 0 : 1];
    bench_reader_open(&context->receive, context->socket);
    return 0;
}

static inline void unix_socket_send(unix_socket_ctx *context, const uint8_t *message, uint32_t size) {
    bench_write_all(context->p, context->socket, message, size);
}

static inline void unix_socket_flush(unix_socket_ctx *context) { (void)context; }

static inline void unix_socket_recv(unix_socket_ctx *context, uint8_t *message, uint32_t size) {
    bench_read_message(context->p, &context->receive, message, size);
}

#define BENCH_TRANSPORT unix_socket
#include "driver.h"
