// c-twin: ShmRing's ring written in C: the same layout (CShmRingLayout.h), record format and
// commit protocol, the same producer bookkeeping per message (tail intent, the commit word stored
// with release, the boundary index, the tail seqlock and counters every 64 records or a sixteenth
// of the ring and at the end of a batch) and the same gating (a rescan at the low watermark with
// the seq_cst handshake), with one gating consumer that copies each message out and publishes its
// cursor as ShmRing's poll does: once per poll, that is after every message in round trips (one
// message a poll) and when it has drained the ring (or read a quarter of it) otherwise. 1 MiB, alignment 16: what ShmRing costs over its own protocol, and
// what its protocol costs over the plain ring. Round trips use one ring per direction.
#include "CShmBench.h"
#include "CShmRingLayout.h"

#define TWIN_CAPACITY (1ull << 20)
#define TWIN_ALIGNMENT 16u
#define TWIN_RING_BYTES (CSHMRING_DATA_OFFSET + TWIN_CAPACITY + 4096)  // header, data, the slot page

typedef struct {
    char *header, *data;
    CShmRing_slot *slot;
    uint64_t salt;
    // producer
    uint64_t position, sequence, limit, rescan_at, last_section, tail_version, published, published_bytes, intent;
    uint64_t tail_published_count, tail_published_position;
    uint64_t *batch_first, batch_first_value;
    int batched;
    // consumer
    uint64_t c_position, c_sequence, c_published;
    int publish_each;  // round trips: the cursor after every message, as ShmRing's poll(limit: 1)
} twin_ring;

typedef struct {
    twin_ring transmit, receive;
} twin_ctx;

size_t CShmBench_twin_bytes(void);
size_t CShmBench_twin_bytes(void) { return 2 * TWIN_RING_BYTES; }

/// The shared part of both rings, once, in the command: the consumer's slot is active and gating.
void CShmBench_twin_initialize(char *memory);
void CShmBench_twin_initialize(char *memory) {
    for (int index = 0; index < 2; index++) {
        CShmRing_slot *slot = (CShmRing_slot *)(memory + index * TWIN_RING_BYTES + CSHMRING_DATA_OFFSET + TWIN_CAPACITY);
        slot->generation = 1;
        slot->policy = 1;
        __atomic_store_n(&slot->active, 1, __ATOMIC_SEQ_CST);
    }
}

static void twin_ring_open(twin_ring *r, char *memory) {
    memset(r, 0, sizeof(*r));
    r->header = memory;
    r->data = memory + CSHMRING_DATA_OFFSET;
    r->slot = (CShmRing_slot *)(memory + CSHMRING_DATA_OFFSET + TWIN_CAPACITY);
    r->salt = 0x5bd1e9955bd1e995ull;
    r->limit = TWIN_CAPACITY;
    r->rescan_at = TWIN_CAPACITY * 3 / 4;
    r->last_section = UINT64_MAX;
}

static inline CShmRing_header *twin_header(twin_ring *r) { return (CShmRing_header *)r->header; }

static inline uint64_t twin_record_size(uint64_t length) {
    return (CSHMRING_RECORD_HEADER + length + TWIN_ALIGNMENT - 1) & ~(uint64_t)(TWIN_ALIGNMENT - 1);
}

static uint64_t twin_gating_minimum(twin_ring *r) {
    CShmRing_slot *s = r->slot;
    uint64_t generation = __atomic_load_n(&s->generation, __ATOMIC_ACQUIRE);
    uint64_t active = __atomic_load_n(&s->active, __ATOMIC_SEQ_CST);
    if (generation == 0 || active != generation || __atomic_load_n(&s->policy, __ATOMIC_RELAXED) != 1) return r->position;
    uint64_t cursor = __atomic_load_n(&s->cursor, __ATOMIC_ACQUIRE);
    return r->position - cursor <= TWIN_CAPACITY ? cursor : r->position;
}

__attribute__((noinline)) static int twin_make_room(twin_ring *r, uint64_t end) {
    // As ShmRing's GatingScanner: seq_cst fence, scan, publish the limit, scan again.
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    uint64_t first = twin_gating_minimum(r);
    __atomic_store_n(&twin_header(r)->producer.limit, first + TWIN_CAPACITY, __ATOMIC_SEQ_CST);
    uint64_t second = twin_gating_minimum(r);
    uint64_t minimum = (int64_t)(second - first) < 0 ? second : first;
    uint64_t limit = minimum + TWIN_CAPACITY;
    if (minimum != first) __atomic_store_n(&twin_header(r)->producer.limit, limit, __ATOMIC_SEQ_CST);
    r->limit = limit;
    uint64_t watermark = limit - TWIN_CAPACITY / 4;
    r->rescan_at = (int64_t)(watermark - r->position) > 0 ? watermark : limit;
    return (int64_t)(end - limit) <= 0;
}

static inline void twin_publish_tail(twin_ring *r) {
    r->tail_published_count = r->published;
    r->tail_published_position = r->position;
    uint64_t version = r->tail_version + 2;
    r->tail_version = version;
    CShmRing_producer *p = &twin_header(r)->producer;
    __atomic_store_n(&p->tail_version, version - 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    __atomic_store_n(&p->tail, r->position, __ATOMIC_RELAXED);
    __atomic_store_n(&p->tail_sequence, r->sequence, __ATOMIC_RELAXED);
    __atomic_store_n(&p->tail_version, version, __ATOMIC_RELEASE);
    __atomic_store_n(&twin_header(r)->counters.published_messages, r->published, __ATOMIC_RELAXED);
    __atomic_store_n(&twin_header(r)->counters.published_bytes, r->published_bytes, __ATOMIC_RELAXED);
}

__attribute__((noinline)) static void twin_record_boundary(twin_ring *r, uint64_t position, uint64_t sequence,
                                                           uint64_t section) {
    r->last_section = section;
    CShmRing_boundary *b = &twin_header(r)->boundaries[section & 15];
    uint64_t version = __atomic_load_n(&b->version, __ATOMIC_RELAXED) | 1;
    __atomic_store_n(&b->version, version, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    __atomic_store_n(&b->position, position, __ATOMIC_RELAXED);
    __atomic_store_n(&b->sequence, sequence, __ATOMIC_RELAXED);
    __atomic_store_n(&b->version, version + 1, __ATOMIC_RELEASE);
}

/// Ends a batch: the batch's first commit word last (release), then the tail.
static inline void twin_end_batch(twin_ring *r) {
    if (r->batch_first) {
        __atomic_store_n(r->batch_first, r->batch_first_value, __ATOMIC_RELEASE);
        r->batch_first = NULL;
        twin_publish_tail(r);
    }
}

/// Publishes one message; 0 when back-pressured.
static inline int twin_publish(twin_ring *r, const uint8_t *bytes, uint32_t length) {
    uint64_t size = twin_record_size(length);
    uint64_t position = r->position;
    uint64_t room = TWIN_CAPACITY - (position & (TWIN_CAPACITY - 1));
    uint64_t padding = size > room ? room : 0;
    uint64_t end = position + padding + size;
    if ((int64_t)(end - r->rescan_at) > 0 && !twin_make_room(r, end)) return 0;
    if ((int64_t)(end - r->intent) > 0) {
        r->intent = end;
        __atomic_store_n(&twin_header(r)->producer.tail_intent, end, __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_RELEASE);
    }
    if (padding) {
        __atomic_store_n((uint64_t *)(r->data + (position & (TWIN_CAPACITY - 1))),
                         CShmRing_padding_word(r->sequence, r->salt), __ATOMIC_RELAXED);
        position += padding;
        r->position = position;
    }
    char *base = r->data + (position & (TWIN_CAPACITY - 1));
    if (length & 7) __atomic_store_n((uint64_t *)(base + CSHMRING_RECORD_HEADER + (length & ~7u)), 0, __ATOMIC_RELAXED);
    CShmBench_copy(base + CSHMRING_RECORD_HEADER, bytes, length);
    CShmRing_record *record = (CShmRing_record *)base;
    __atomic_store_n((uint64_t *)&record->length, CShmRing_header_word(length, 0), __ATOMIC_RELAXED);
    uint64_t word = CShmRing_record_word(r->sequence, r->salt, length, 0);
    if (!r->batched) {
        __atomic_store_n(&record->commit, word, __ATOMIC_RELEASE);  // pairs with the poll's acquire
    } else if (r->batch_first == NULL) {
        r->batch_first = &record->commit;
        r->batch_first_value = word;
    } else {
        __atomic_store_n(&record->commit, word, __ATOMIC_RELAXED);  // ordered by the first's release
    }
    uint64_t section = position >> (__builtin_ctzll(TWIN_CAPACITY) - 4);
    if (section != r->last_section) twin_record_boundary(r, position, r->sequence, section);
    r->position = position + size;
    r->sequence = (r->sequence + 1) & CSHMRING_SEQUENCE_MASK;
    r->published++;
    r->published_bytes += length;
    if (!r->batched && (r->published - r->tail_published_count >= 64
                        || r->position - r->tail_published_position >= TWIN_CAPACITY / 16))
        twin_publish_tail(r);
    return 1;
}

/// Takes one message, copying it to `message`; 0 when there is none.
static inline int twin_poll(twin_ring *r, uint8_t *message, uint32_t size) {
    for (;;) {
        uint64_t offset = r->c_position & (TWIN_CAPACITY - 1);
        char *base = r->data + offset;
        // Acquire: pairs with the commit word's release (or the batch's first).
        uint64_t rest = __atomic_load_n((uint64_t *)base, __ATOMIC_ACQUIRE) ^ CShmRing_sequence_mix(r->c_sequence ^ r->salt);
        uint64_t header = __atomic_load_n((uint64_t *)&((CShmRing_record *)base)->length, __ATOMIC_RELAXED);
        uint32_t length = (uint32_t)header;
        if (rest != CShmRing_header_shape(header)) {
            if (rest != CSHMRING_PADDING_SHAPE) {
                // Nothing more: the cursor goes out once per poll that drained the ring (release:
                // the records were read before the producer may reuse their bytes).
                if (r->c_position != r->c_published) {
                    r->c_published = r->c_position;
                    __atomic_store_n(&r->slot->cursor, r->c_position, __ATOMIC_RELEASE);
                }
                return 0;
            }
            r->c_position += TWIN_CAPACITY - offset;
            continue;
        }
        uint64_t record = twin_record_size(length);
        if (length > TWIN_CAPACITY / 4 || offset + record > TWIN_CAPACITY) abort();
        CShmBench_copy(message, base + CSHMRING_RECORD_HEADER, length < size ? length : size);
        r->c_position += record;
        r->c_sequence = (r->c_sequence + 1) & CSHMRING_SEQUENCE_MASK;
        if (r->publish_each || r->c_position - r->c_published >= TWIN_CAPACITY / 4) {
            r->c_published = r->c_position;
            __atomic_store_n(&r->slot->cursor, r->c_position, __ATOMIC_RELEASE);  // as above
        }
        return 1;
    }
}

static int twin_open(twin_ctx *context, const CShmBench_params *p) {
    char *memory = (char *)mmap(NULL, 2 * TWIN_RING_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                                p->fds[0], 0);
    if (memory == MAP_FAILED) CShmBench_fail(p->shared, "c-twin: mmap: %s", strerror(errno));
    char *rings[2] = {memory, memory + TWIN_RING_BYTES};
    int rtt = p->scenario == CSHMBENCH_RTT_SPIN;
    twin_ring_open(&context->transmit, rings[p->role == 0 || !rtt ? 0 : 1]);
    twin_ring_open(&context->receive, rings[p->role == 0 && rtt ? 1 : 0]);
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
