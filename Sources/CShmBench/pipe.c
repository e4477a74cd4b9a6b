// pipe: one write(2) per message (each visible at once) and blocking, buffered reads. Descriptors
// from CShmBench_prepare: read and write ends of one pipe per consumer (fanout: the producer writes
// every message to each), and of one pipe per direction for round trips.
#include "kernel_io.h"

typedef struct {
    const CShmBench_params *p;
    bench_reader receive;
    int transmit[CSHMBENCH_MAX_CONSUMERS];
    int transmit_count;
} pipe_ctx;

static int pipe_open(pipe_ctx *context, const CShmBench_params *p) {
    memset(context, 0, sizeof(*context));
    context->p = p;
    if (CShmBench_round_trip(p)) {  // [r0, w0, r1, w1]: 0 carries role 0 -> role 1
        context->transmit[0] = p->fds[p->role == 0 ? 1 : 3];
        context->transmit_count = 1;
        bench_reader_open(&context->receive, p->fds[p->role == 0 ? 2 : 0]);
    } else if (p->role == 0) {  // [r0, w0, r1, w1, ...]: one pipe per consumer
        for (int index = 0; index < p->consumers; index++) context->transmit[index] = p->fds[2 * index + 1];
        context->transmit_count = p->consumers;
    } else {
        bench_reader_open(&context->receive, p->fds[2 * (p->role - 1)]);
    }
    return 0;
}

static inline void pipe_send(pipe_ctx *context, const uint8_t *message, uint32_t size) {
    for (int index = 0; index < context->transmit_count; index++)
        bench_write_all(context->p, context->transmit[index], message, size);
}

static inline void pipe_flush(pipe_ctx *context) { (void)context; }

static inline void pipe_recv(pipe_ctx *context, uint8_t *message, uint32_t size) {
    bench_read_message(context->p, &context->receive, message, size);
}

#define BENCH_TRANSPORT pipe
#include "driver.h"
