// eventfd: the kernel's wake-up floor for round trips that sleep. One eventfd per direction; a
// message is its first word, added to the counter by write(2) and taken by a blocking read(2)
// (the rest of the payload is not carried).
#include "kernel_io.h"

typedef struct {
    const CShmBench_params *p;
    int transmit, receive;
} eventfd_ctx;

static int eventfd_open(eventfd_ctx *context, const CShmBench_params *p) {
    context->p = p;
    context->transmit = p->fds[p->role == 0 ? 0 : 1];
    context->receive = p->fds[p->role == 0 ? 1 : 0];
    return 0;
}

static inline void eventfd_send(eventfd_ctx *context, const uint8_t *message, uint32_t size) {
    (void)size;
    bench_write_all(context->p, context->transmit, message, 8);
}

static inline void eventfd_flush(eventfd_ctx *context) { (void)context; }

static inline void eventfd_recv(eventfd_ctx *context, uint8_t *message, uint32_t size) {
    (void)size;
    bench_read_all(context->p, context->receive, message, 8);
}

#define BENCH_TRANSPORT eventfd
#include "driver.h"
