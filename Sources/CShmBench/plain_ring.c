// plain-ring: the SPSC ring a careful C programmer writes: 1024 fixed slots (64 bytes, or the
// message size rounded up to 64), cached head and tail on their own lines, busy-spin. With batch 1
// both indices are published after every message (the per-message baseline); with a batch, the
// head is published once per batch and the tail every 16 messages or when the consumer has
// drained what it saw (the batched baseline). Round trips use one ring per direction.
#include "CShmBench.h"

#define PLAIN_RING_SLOTS 1024u

typedef struct {
    uint64_t head;
    uint64_t pad0[15];
    uint64_t tail;
    uint64_t pad1[15];
} plain_ring_indices;

typedef struct {
    plain_ring_indices *transmit_indices, *receive_indices;
    uint8_t *transmit_slots, *receive_slots;
    uint64_t slot_bytes, head, tail_cache, tail, head_cache;
    int batched;
} plain_ring_ctx;

size_t CShmBench_plain_ring_bytes(uint32_t size);
size_t CShmBench_plain_ring_bytes(uint32_t size) {
    uint64_t slot = (size + 63u) & ~63u;
    return 2 * (sizeof(plain_ring_indices) + PLAIN_RING_SLOTS * slot);
}

static int plain_ring_open(plain_ring_ctx *context, const CShmBench_params *p) {
    memset(context, 0, sizeof(*context));
    size_t bytes = CShmBench_plain_ring_bytes(p->size);
    uint8_t *memory = (uint8_t *)mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, p->fds[0], 0);
    if (memory == MAP_FAILED) CShmBench_fail(p->shared, "plain-ring: mmap: %s", strerror(errno));
    context->slot_bytes = (p->size + 63u) & ~63u;
    size_t one = bytes / 2;
    uint8_t *rings[2] = {memory, memory + one};
    uint8_t *transmit = rings[p->role == 0 ? 0 : 1], *receive = rings[p->role == 0 ? 1 : 0];
    if (p->scenario != CSHMBENCH_RTT_SPIN) receive = rings[0];  // one direction only
    context->transmit_indices = (plain_ring_indices *)transmit;
    context->transmit_slots = transmit + sizeof(plain_ring_indices);
    context->receive_indices = (plain_ring_indices *)receive;
    context->receive_slots = receive + sizeof(plain_ring_indices);
    context->batched = p->batch > 1;
    return 0;
}

static inline void plain_ring_send(plain_ring_ctx *context, const uint8_t *message, uint32_t size) {
    while (context->head - context->tail_cache >= PLAIN_RING_SLOTS) {
        // A batch's head goes out before waiting (release, as in send): the consumer must see what
        // it is to read before it can free space.
        if (context->batched) __atomic_store_n(&context->transmit_indices->head, context->head, __ATOMIC_RELEASE);
        // Acquire: pairs with the consumer's release of its tail (the slot's bytes were read).
        context->tail_cache = __atomic_load_n(&context->transmit_indices->tail, __ATOMIC_ACQUIRE);
        if (context->head - context->tail_cache >= PLAIN_RING_SLOTS) CShmBench_pause();
    }
    CShmBench_copy(context->transmit_slots + (context->head & (PLAIN_RING_SLOTS - 1)) * context->slot_bytes, message, size);
    context->head++;
    // Release: the slot's bytes before the head; pairs with the consumer's acquire of the head.
    if (!context->batched) __atomic_store_n(&context->transmit_indices->head, context->head, __ATOMIC_RELEASE);
}

static inline void plain_ring_flush(plain_ring_ctx *context) {
    // Release: the batch's slots before the head, as in send.
    if (context->batched) __atomic_store_n(&context->transmit_indices->head, context->head, __ATOMIC_RELEASE);
}

static inline void plain_ring_recv(plain_ring_ctx *context, uint8_t *message, uint32_t size) {
    while (context->tail == context->head_cache) {
        // Acquire: pairs with the producer's release of its head.
        context->head_cache = __atomic_load_n(&context->receive_indices->head, __ATOMIC_ACQUIRE);
        if (context->tail == context->head_cache) CShmBench_pause();
    }
    CShmBench_copy(message, context->receive_slots + (context->tail & (PLAIN_RING_SLOTS - 1)) * context->slot_bytes, size);
    context->tail++;
    // Release: the slot was read before the producer may reuse it; pairs with its acquire.
    if (!context->batched || (context->tail & 15) == 0 || context->tail == context->head_cache)
        __atomic_store_n(&context->receive_indices->tail, context->tail, __ATOMIC_RELEASE);
}

#define BENCH_TRANSPORT plain_ring
#include "driver.h"
