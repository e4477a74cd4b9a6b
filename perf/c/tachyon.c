// Baseline in the manner of Tachyon (riyaneel/Tachyon): variable-size records, each a 64-byte
// header and a payload rounded up to 64 bytes; the producer publishes its head index every 32
// commits (and at batch_end: a flush), the consumer its tail every 32 messages (and when it has
// drained what it saw). So a single commit is invisible until a flush: in per-message runs
// (BATCH 1) every message is flushed. Our own code, written after its published layout.
// Usage: see harness.h. CAPACITY in bytes.
#include "common.h"

#ifndef RING_NAME
#define RING_NAME "tachyon-style"
#endif
#define EVERY 32

typedef struct {
    uint32_t size;
    uint32_t type;
    uint32_t reserved_size;  // header + payload, rounded to 64
    uint8_t padding[52];
} header_t;
_Static_assert(sizeof(header_t) == 64, "a 64-byte header");

typedef struct {
    _Alignas(128) uint64_t head;  // bytes written and visible (producer)
    _Alignas(128) uint64_t tail;  // bytes consumed (consumer)
    _Alignas(128) uint64_t capacity;
    _Alignas(128) uint8_t data[];
} ring_t;

typedef struct {
    ring_t *ring;
    uint64_t head, tail_cache, mask, published, pending;
} producer_t;

typedef struct {
    ring_t *ring;
    uint64_t tail, head_cache, mask, pending;
} consumer_t;

static size_t ring_bytes(size_t capacity) { return sizeof(ring_t) + capacity; }
static void ring_init(ring_t *ring, size_t capacity) { ring->capacity = capacity; }

static void producer_open(producer_t *p, ring_t *ring) {
    memset(p, 0, sizeof(*p));
    p->ring = ring;
    p->mask = ring->capacity - 1;
}

static void producer_set_batch(producer_t *p, uint64_t batch) {
    (void)p;
    (void)batch;
}

static void consumer_open(consumer_t *c, ring_t *ring) {
    memset(c, 0, sizeof(*c));
    c->ring = ring;
    c->mask = ring->capacity - 1;
}

static inline __attribute__((always_inline)) void batch_end(producer_t *p) {
    if (p->published != p->head) {
        p->published = p->head;
        p->pending = 0;
        __atomic_store_n(&p->ring->head, p->head, __ATOMIC_RELEASE);
    }
}

static inline __attribute__((always_inline)) int publish(producer_t *p, const uint8_t *message, uint32_t length) {
    uint64_t size = (sizeof(header_t) + length + 63) & ~(uint64_t)63;
    uint64_t room = p->ring->capacity - (p->head & p->mask);
    uint64_t skip = size > room ? room : 0;  // a record never wraps: a skip marker fills the lap
    if (p->head + skip + size - p->tail_cache > p->ring->capacity) {
        p->tail_cache = __atomic_load_n(&p->ring->tail, __ATOMIC_ACQUIRE);
        if (p->head + skip + size - p->tail_cache > p->ring->capacity) return 0;
    }
    if (skip) {
        header_t *marker = (header_t *)(p->ring->data + (p->head & p->mask));
        marker->size = 0;
        marker->reserved_size = (uint32_t)skip;
        p->head += skip;
    }
    header_t *header = (header_t *)(p->ring->data + (p->head & p->mask));
    header->size = length;
    header->type = 0;
    header->reserved_size = (uint32_t)size;
    memcpy(header + 1, message, length);
    p->head += size;
    if (++p->pending >= EVERY) batch_end(p);
    return 1;
}

static inline __attribute__((always_inline)) uint64_t poll(consumer_t *c, uint64_t limit, uint64_t *sum) {
    uint64_t count = 0;
    while (count < limit) {
        if (c->tail == c->head_cache) {
            if (c->pending) {
                c->pending = 0;
                __atomic_store_n(&c->ring->tail, c->tail, __ATOMIC_RELEASE);  // drained what it saw
            }
            c->head_cache = __atomic_load_n(&c->ring->head, __ATOMIC_ACQUIRE);
            if (c->tail == c->head_cache) break;
        }
        const header_t *header = (const header_t *)(c->ring->data + (c->tail & c->mask));
        uint32_t reserved = header->reserved_size;
        if (header->size) {
            uint64_t value;
            memcpy(&value, header + 1, 8);
            *sum += value;
            count++;
        }
        c->tail += reserved;
        if (++c->pending >= EVERY) {
            c->pending = 0;
            __atomic_store_n(&c->ring->tail, c->tail, __ATOMIC_RELEASE);
        }
    }
    return count;
}

#include "harness.h"
