// line-floor: the round-trip floor. One message per direction, each in its own 4 KiB region of a
// memfd; the message's first word (its sequence) is the commit word, stored last with release
// and busy-spun on by the peer. No ring, no index: round trips only (rtt-spin).
#include "CShmBench.h"

typedef struct {
    uint8_t *transmit, *receive;
    uint64_t last;
} line_floor_ctx;

static int line_floor_open(line_floor_ctx *context, const CShmBench_params *p) {
    uint8_t *lines = (uint8_t *)mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, p->fds[0], 0);
    if (lines == MAP_FAILED) CShmBench_fail(p->shared, "line-floor: mmap: %s", strerror(errno));
    context->transmit = lines + (p->role == 0 ? 0 : 4096);
    context->receive = lines + (p->role == 0 ? 4096 : 0);
    context->last = 0;
    return 0;
}

static inline void line_floor_send(line_floor_ctx *context, const uint8_t *message, uint32_t size) {
    CShmBench_copy(context->transmit + 8, message + 8, size - 8);
    uint64_t word;
    memcpy(&word, message, 8);
    // Release: the payload above is visible before the word; pairs with the acquire in recv.
    __atomic_store_n((uint64_t *)context->transmit, word, __ATOMIC_RELEASE);
}

static inline void line_floor_flush(line_floor_ctx *context) { (void)context; }

static inline void line_floor_recv(line_floor_ctx *context, uint8_t *message, uint32_t size) {
    uint64_t word;
    // Acquire: pairs with the release in send; a new word means a new message (sequences grow).
    while ((word = __atomic_load_n((uint64_t *)context->receive, __ATOMIC_ACQUIRE)) == context->last) CShmBench_pause();
    context->last = word;
    CShmBench_copy(message + 8, context->receive + 8, size - 8);
    memcpy(message, &word, 8);
}

#define BENCH_TRANSPORT line_floor
#include "driver.h"
