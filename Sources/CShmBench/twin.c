// c-twin: ShmRing's ring written in C (twin_ring.h), 1 MiB, alignment 16: what ShmRing costs over
// its own protocol, and what its protocol costs over the plain ring. One gating consumer copies
// each message out and publishes its cursor as ShmRing's poll does: once per poll, that is after
// every message in round trips (one message a poll), and when it has drained the ring (or read a
// quarter of it) otherwise. Round trips use one ring per direction.
#include "CShmBench.h"
#define TWIN_COPY CShmBench_copy
#include "twin_ring.h"

#define TWIN_ALIGNMENT 16u
#define TWIN_RING_BYTES (CSHMRING_DATA_OFFSET + TWIN_CAPACITY + 4096)  // header, data, the slot page

typedef struct {
    twin_ring transmit, receive;
} twin_ctx;

static CShmRing_slot *twin_slot(char *ring) { return (CShmRing_slot *)(ring + CSHMRING_DATA_OFFSET + TWIN_CAPACITY); }

size_t CShmBench_twin_bytes(void);
size_t CShmBench_twin_bytes(void) { return 2 * TWIN_RING_BYTES; }

/// The shared part of both rings, once, in the command.
void CShmBench_twin_initialize(char *memory);
void CShmBench_twin_initialize(char *memory) {
    for (int index = 0; index < 2; index++) twin_slot_activate(twin_slot(memory + index * TWIN_RING_BYTES));
}

/// Takes one message, copying it to `message`; 0 when there is none.
static inline int twin_poll(twin_ring *r, uint8_t *message, uint32_t size) {
    uint32_t length;
    const char *payload = twin_next(r, &length);
    if (!payload) {
        twin_publish_cursor(r);  // a poll that drained the ring
        return 0;
    }
    CShmBench_copy(message, payload, length < size ? length : size);
    if (r->publish_each || r->c_position - r->c_published >= TWIN_CAPACITY / 4) twin_publish_cursor(r);
    return 1;
}

static int twin_open(twin_ctx *context, const CShmBench_params *p) {
    char *memory = (char *)mmap(NULL, 2 * TWIN_RING_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                                p->fds[0], 0);
    if (memory == MAP_FAILED) CShmBench_fail(p->shared, "c-twin: mmap: %s", strerror(errno));
    char *rings[2] = {memory, memory + TWIN_RING_BYTES};
    int rtt = p->scenario == CSHMBENCH_RTT_SPIN;
    char *transmit = rings[p->role == 0 || !rtt ? 0 : 1], *receive = rings[p->role == 0 && rtt ? 1 : 0];
    twin_ring_open(&context->transmit, transmit, twin_slot(transmit), TWIN_ALIGNMENT);
    twin_ring_open(&context->receive, receive, twin_slot(receive), TWIN_ALIGNMENT);
    context->transmit.batched = p->batch > 1;
    context->receive.publish_each = rtt;
    return 0;
}

static inline void twin_send(twin_ctx *context, const uint8_t *message, uint32_t size) {
    while (!twin_publish(&context->transmit, message, size)) {
        twin_end_batch(&context->transmit);  // what is published must be visible to free space
        CShmBench_pause();
    }
}

static inline void twin_flush(twin_ctx *context) { twin_end_batch(&context->transmit); }

static inline void twin_recv(twin_ctx *context, uint8_t *message, uint32_t size) {
    while (!twin_poll(&context->receive, message, size)) CShmBench_pause();
}

#define BENCH_TRANSPORT twin
#include "driver.h"
