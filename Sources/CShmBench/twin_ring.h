// ShmRing's ring written in C, the "twin": the same layout (CShmRingLayout.h), record format and
// commit protocol, the same producer bookkeeping per message (tail intent, the commit word stored
// with release, the boundary index, the tail seqlock and counters every 64 records or a sixteenth
// of the ring and at the end of a batch) and the same gating (a rescan at the low watermark with
// the seq_cst handshake against one consumer slot). Used by the bench's c-twin (twin.c beside
// this file) and by the record-protocol study (perf/c/twin.c), which decide how their consumer
// publishes its cursor.
//
// Knobs, defined before including: TWIN_CAPACITY (default 1 MiB, a power of two), TWIN_COPY
// (default memcpy), TWIN_NO_LOSSY_INDEX (leaves out the tail intent and the boundary index: what
// lossy readers cost the producer).
#ifndef SHMRING_TWIN_RING_H
#define SHMRING_TWIN_RING_H
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "CShmRingLayout.h"

#ifndef TWIN_CAPACITY
#define TWIN_CAPACITY (1ull << 20)
#endif
#ifndef TWIN_COPY
#define TWIN_COPY memcpy
#endif

typedef struct {
    char *header, *data;
    CShmRing_slot *slot;
    uint64_t salt;
    uint32_t alignment;
    // producer
    uint64_t position, sequence, limit, rescan_at, last_section, tail_version, published, published_bytes, intent;
    uint64_t tail_published_count, tail_published_position;
    uint64_t *batch_first, batch_first_value;
    int batched;  // inside a batch: the first commit word waits for twin_end_batch
    // consumer
    uint64_t c_position, c_sequence, c_published;
    int publish_each;  // the bench's round trips: the cursor after every message
} twin_ring;

/// The consumer's slot, once, before either side opens: active and gating.
static inline void twin_slot_activate(CShmRing_slot *slot) {
    slot->generation = 1;
    slot->policy = 1;
    __atomic_store_n(&slot->active, 1, __ATOMIC_SEQ_CST);
}

/// Either side's private state over a ring whose header and data start at `memory`.
static inline void twin_ring_open(twin_ring *r, char *memory, CShmRing_slot *slot, uint32_t alignment) {
    memset(r, 0, sizeof(*r));
    r->header = memory;
    r->data = memory + CSHMRING_DATA_OFFSET;
    r->slot = slot;
    r->salt = 0x5bd1e9955bd1e995ull;
    r->alignment = alignment;
    r->limit = TWIN_CAPACITY;
    r->rescan_at = TWIN_CAPACITY * 3 / 4;
    r->last_section = UINT64_MAX;
}

static inline CShmRing_header *twin_header(twin_ring *r) { return (CShmRing_header *)r->header; }

static inline uint64_t twin_record_size(const twin_ring *r, uint64_t length) {
    return (CSHMRING_RECORD_HEADER + length + r->alignment - 1) & ~(uint64_t)(r->alignment - 1);
}

static uint64_t twin_gating_minimum(twin_ring *r) {
    CShmRing_slot *s = r->slot;
    // As ShmRing's scanner: generation (acquire) and active (seq_cst, the partner of the joiner's
    // seq_cst store of `active`, here twin_slot_activate's) say whether the slot gates; the
    // cursor's acquire pairs with twin_publish_cursor's release.
    uint64_t generation = __atomic_load_n(&s->generation, __ATOMIC_ACQUIRE);
    uint64_t active = __atomic_load_n(&s->active, __ATOMIC_SEQ_CST);
    if (generation == 0 || active != generation || __atomic_load_n(&s->policy, __ATOMIC_RELAXED) != 1) return r->position;
    uint64_t cursor = __atomic_load_n(&s->cursor, __ATOMIC_ACQUIRE);
    return r->position - cursor <= TWIN_CAPACITY ? cursor : r->position;
}

__attribute__((noinline)) static int twin_make_room(twin_ring *r, uint64_t end) {
    // As ShmRing's GatingScanner: seq_cst fence, scan, publish the limit (seq_cst: ShmRing's joiner
    // reads it after its seq_cst store of `active`, so one of them sees the other), scan again.
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
    if ((int64_t)(end - limit) <= 0) return 1;
    CShmRing_counters *counters = &twin_header(r)->counters;
    // Relaxed: a statistic (only the producer writes it).
    __atomic_store_n(&counters->back_pressure_events, counters->back_pressure_events + 1, __ATOMIC_RELAXED);
    return 0;
}

static inline void twin_publish_tail(twin_ring *r) {
    r->tail_published_count = r->published;
    r->tail_published_position = r->position;
    uint64_t version = r->tail_version + 2;
    r->tail_version = version;
    CShmRing_producer *p = &twin_header(r)->producer;
    // ShmRing's tail seqlock, for its observers and lossy readers (the twin has neither: these
    // stores are its cost): odd version, release fence, the fields, the even version with release,
    // which pairs with a reader's acquire of the version. The counters are relaxed statistics.
    __atomic_store_n(&p->tail_version, version - 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    __atomic_store_n(&p->tail, r->position, __ATOMIC_RELAXED);
    __atomic_store_n(&p->tail_sequence, r->sequence, __ATOMIC_RELAXED);
    __atomic_store_n(&p->tail_version, version, __ATOMIC_RELEASE);
    __atomic_store_n(&twin_header(r)->counters.published_messages, r->published, __ATOMIC_RELAXED);
    __atomic_store_n(&twin_header(r)->counters.published_bytes, r->published_bytes, __ATOMIC_RELAXED);
}

#ifndef TWIN_NO_LOSSY_INDEX
__attribute__((noinline)) static void twin_record_boundary(twin_ring *r, uint64_t position, uint64_t sequence,
                                                           uint64_t section) {
    r->last_section = section;
    CShmRing_boundary *b = &twin_header(r)->boundaries[section & 15];
    // A seqlock as the tail's (same partners: lossy readers' acquire of the version).
    uint64_t version = __atomic_load_n(&b->version, __ATOMIC_RELAXED) | 1;
    __atomic_store_n(&b->version, version, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    __atomic_store_n(&b->position, position, __ATOMIC_RELAXED);
    __atomic_store_n(&b->sequence, sequence, __ATOMIC_RELAXED);
    __atomic_store_n(&b->version, version + 1, __ATOMIC_RELEASE);
}
#endif

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
    uint64_t size = twin_record_size(r, length);
    uint64_t position = r->position;
    uint64_t room = TWIN_CAPACITY - (position & (TWIN_CAPACITY - 1));
    uint64_t padding = size > room ? room : 0;
    uint64_t end = position + padding + size;
    if ((int64_t)(end - r->rescan_at) > 0 && !twin_make_room(r, end)) return 0;
#ifndef TWIN_NO_LOSSY_INDEX
    // Lap detection for lossy readers: the tail intent, stored only when it moves forward, then a
    // release fence (a compiler barrier on x86-64), before the record's bytes.
    if ((int64_t)(end - r->intent) > 0) {
        r->intent = end;
        __atomic_store_n(&twin_header(r)->producer.tail_intent, end, __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_RELEASE);
    }
#endif
    if (padding) {
        __atomic_store_n((uint64_t *)(r->data + (position & (TWIN_CAPACITY - 1))),
                         CShmRing_padding_word(r->sequence, r->salt), __ATOMIC_RELAXED);
        position += padding;
        r->position = position;
    }
    char *base = r->data + (position & (TWIN_CAPACITY - 1));
    if (length & 7) __atomic_store_n((uint64_t *)(base + CSHMRING_RECORD_HEADER + (length & ~7u)), 0, __ATOMIC_RELAXED);
    TWIN_COPY(base + CSHMRING_RECORD_HEADER, bytes, length);
    CShmRing_record *record = (CShmRing_record *)base;
    // Relaxed, as the payload: ordered before the reader by the commit word's release below.
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
#ifndef TWIN_NO_LOSSY_INDEX
    uint64_t section = position >> (__builtin_ctzll(TWIN_CAPACITY) - 4);
    if (section != r->last_section) twin_record_boundary(r, position, r->sequence, section);
#endif
    r->position = position + size;
    r->sequence = (r->sequence + 1) & CSHMRING_SEQUENCE_MASK;
    r->published++;
    r->published_bytes += length;
    if (!r->batched && (r->published - r->tail_published_count >= 64
                        || r->position - r->tail_published_position >= TWIN_CAPACITY / 16))
        twin_publish_tail(r);
    return 1;
}

/// The next committed record's payload (its length in *length), the consumer's position moved
/// past it; NULL when there is none. The cursor is not published: see twin_publish_cursor.
static inline const char *twin_next(twin_ring *r, uint32_t *length) {
    for (;;) {
        uint64_t offset = r->c_position & (TWIN_CAPACITY - 1);
        char *base = r->data + offset;
        // Acquire: pairs with the commit word's release (or the batch's first).
        uint64_t rest = __atomic_load_n((uint64_t *)base, __ATOMIC_ACQUIRE) ^ CShmRing_sequence_mix(r->c_sequence ^ r->salt);
        // Relaxed: after the acquire above, which orders it.
        uint64_t header = __atomic_load_n((uint64_t *)&((CShmRing_record *)base)->length, __ATOMIC_RELAXED);
        *length = (uint32_t)header;
        if (rest != CShmRing_header_shape(header)) {
            if (rest != CSHMRING_PADDING_SHAPE) return NULL;
            r->c_position += TWIN_CAPACITY - offset;
            continue;
        }
        uint64_t record = twin_record_size(r, *length);
        if (*length > TWIN_CAPACITY / 4 || offset + record > TWIN_CAPACITY) abort();
        r->c_position += record;
        r->c_sequence = (r->c_sequence + 1) & CSHMRING_SEQUENCE_MASK;
        return base + CSHMRING_RECORD_HEADER;
    }
}

/// Publishes the consumer's cursor if it moved. Release: the records were read before the
/// producer may reuse their bytes; pairs with the acquire in twin_gating_minimum.
static inline void twin_publish_cursor(twin_ring *r) {
    if (r->c_position == r->c_published) return;
    r->c_published = r->c_position;
    __atomic_store_n(&r->slot->cursor, r->c_position, __ATOMIC_RELEASE);
}
#endif
