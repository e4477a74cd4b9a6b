// futex: a shared futex word per direction in a memfd (FUTEX_WAKE / FUTEX_WAIT, shared, not
// private: two processes). A message is its first word, stored beside the futex word; the sender
// then bumps the futex word and wakes; the receiver sleeps while the futex word is unchanged.
#include "CShmBench.h"
#include <linux/futex.h>
#include <sys/syscall.h>

typedef struct {
    uint32_t futex;
    uint32_t pad;
    uint64_t value;
    uint64_t rest[6];
} futex_direction;

typedef struct {
    futex_direction *transmit, *receive;
    uint32_t sent, seen;
} futex_ctx;

static int futex_open(futex_ctx *context, const CShmBench_params *p) {
    futex_direction *directions = (futex_direction *)mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                                                          p->fds[0], 0);
    if (directions == MAP_FAILED) CShmBench_fail(p->shared, "futex: mmap: %s", strerror(errno));
    context->transmit = &directions[p->role == 0 ? 0 : 1];
    context->receive = &directions[p->role == 0 ? 1 : 0];
    context->sent = context->seen = 0;
    return 0;
}

static inline void futex_send(futex_ctx *context, const uint8_t *message, uint32_t size) {
    (void)size;
    uint64_t word;
    memcpy(&word, message, 8);
    __atomic_store_n(&context->transmit->value, word, __ATOMIC_RELAXED);  // published by the release below
    // Release: the value before the futex word; pairs with the receiver's acquire.
    __atomic_store_n(&context->transmit->futex, ++context->sent, __ATOMIC_RELEASE);
    syscall(SYS_futex, &context->transmit->futex, FUTEX_WAKE, 1, NULL, NULL, 0);
}

static inline void futex_flush(futex_ctx *context) { (void)context; }

static inline void futex_recv(futex_ctx *context, uint8_t *message, uint32_t size) {
    (void)size;
    uint32_t now;
    // Acquire: pairs with the sender's release of the futex word. The kernel compares the word
    // with `seen` before sleeping, so a wake between the load and the wait is not lost.
    while ((now = __atomic_load_n(&context->receive->futex, __ATOMIC_ACQUIRE)) == context->seen)
        syscall(SYS_futex, &context->receive->futex, FUTEX_WAIT, context->seen, NULL, NULL, 0);
    context->seen = now;
    uint64_t word = __atomic_load_n(&context->receive->value, __ATOMIC_RELAXED);  // ordered by the acquire
    memcpy(message, &word, 8);
}

#define BENCH_TRANSPORT futex
#include "driver.h"
