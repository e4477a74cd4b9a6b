// Baseline: an SPSC ring of fixed 64-byte slots with cached indices (rigtorp's SPSCQueue shape).
//   -DINDEX_EVERY=1 (default): both indices published after every message: the per-message floor.
//   -DINDEX_EVERY=0: indices published only at batch_end (the producer's batch) and when the
//     consumer has drained what it saw: the batched-index floor (run it with BATCH 16 or 32).
// Usage: see harness.h. CAPACITY is in bytes (slots of 64).
#include "common.h"

#ifndef INDEX_EVERY
#define INDEX_EVERY 1
#endif
#ifndef RING_NAME
#if INDEX_EVERY
#define RING_NAME "slots"
#else
#define RING_NAME "slots-batched"
#endif
#endif

typedef struct {
    _Alignas(128) uint64_t head;  // next slot to write (producer)
    _Alignas(128) uint64_t tail;  // next slot to read (consumer)
    _Alignas(128) uint64_t slots_count;
    _Alignas(128) uint8_t slots[];
} ring_t;

typedef struct {
    ring_t *ring;
    uint64_t head, tail_cache, mask, published;
} producer_t;

typedef struct {
    ring_t *ring;
    uint64_t tail, head_cache, mask;
} consumer_t;

static size_t ring_bytes(size_t capacity) { return sizeof(ring_t) + capacity; }
static void ring_init(ring_t *ring, size_t capacity) { ring->slots_count = capacity / 64; }

static void producer_open(producer_t *p, ring_t *ring) {
    memset(p, 0, sizeof(*p));
    p->ring = ring;
    p->mask = ring->slots_count - 1;
}

static void producer_set_batch(producer_t *p, uint64_t batch) {
    (void)p;
    (void)batch;
}

static void consumer_open(consumer_t *c, ring_t *ring) {
    memset(c, 0, sizeof(*c));
    c->ring = ring;
    c->mask = ring->slots_count - 1;
}

static inline __attribute__((always_inline)) int publish(producer_t *p, const uint8_t *message, uint32_t length) {
    if (p->head - p->tail_cache > p->mask) {
        p->tail_cache = __atomic_load_n(&p->ring->tail, __ATOMIC_ACQUIRE);
        if (p->head - p->tail_cache > p->mask) return 0;
    }
    memcpy(p->ring->slots + (p->head & p->mask) * 64, message, length > 64 ? 64 : length);
    p->head++;
#if INDEX_EVERY
    __atomic_store_n(&p->ring->head, p->head, __ATOMIC_RELEASE);
#endif
    return 1;
}

static inline __attribute__((always_inline)) void batch_end(producer_t *p) {
#if !INDEX_EVERY
    if (p->published != p->head) {
        p->published = p->head;
        __atomic_store_n(&p->ring->head, p->head, __ATOMIC_RELEASE);
    }
#else
    (void)p;
#endif
}

static inline __attribute__((always_inline)) uint64_t poll(consumer_t *c, uint64_t limit, uint64_t *sum) {
    uint64_t count = 0;
    while (count < limit) {
        if (c->tail == c->head_cache) {
#if !INDEX_EVERY
            if (count) __atomic_store_n(&c->ring->tail, c->tail, __ATOMIC_RELEASE);  // drained what it saw
#endif
            c->head_cache = __atomic_load_n(&c->ring->head, __ATOMIC_ACQUIRE);
            if (c->tail == c->head_cache) break;
        }
        uint64_t value;
        memcpy(&value, c->ring->slots + (c->tail & c->mask) * 64, 8);
        *sum += value;
        c->tail++;
        count++;
#if INDEX_EVERY
        __atomic_store_n(&c->ring->tail, c->tail, __ATOMIC_RELEASE);
#else
        if ((c->tail & 15) == 0) __atomic_store_n(&c->ring->tail, c->tail, __ATOMIC_RELEASE);
#endif
    }
    return count;
}

#include "harness.h"
