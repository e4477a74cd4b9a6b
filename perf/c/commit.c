// The record-protocol study: a commit-in-header ring (a 16-byte header per record: commit word,
// length, type; the commit word stored last, with release) whose costs can be switched on one at
// a time. With every knob at its default it is the minimal commit-in-header ring: the floor for a
// ring's round trip here. docs/performance.md, "The record protocol, studied in C", has the table.
//
// Knobs (-D at compile time):
//   ALIGN=16          record alignment (a record is 16 + payload bytes, rounded up to it)
//   MIX=0|1           commit word: sequence + 1 (0), or ShmRing's (1): CShmRing_record_word, a
//                     64-bit mix of sequence and salt, XOR the record's shape (both sides compute it)
//   KEEP=0|1|2|3      producer bookkeeping per publish: none (0); ShmRing layout 3's (1): the tail
//                     intent (relaxed store + release fence) on every claim, the tail under a
//                     seqlock and two counters after every publish, a boundary entry per sixteenth;
//                     amortized (2): the intent claimed a sixteenth of the ring ahead, the tail and
//                     counters only at the end of a batch and every 64 publishes; amortized tail,
//                     exact intent (3): the intent on every claim as in 1, the tail and counters as in 2
//   PF_BATCH=0|K      the producer prefetches for writing K lines ahead, inside batches only
//   PF_TAIL=0|N       the consumer reads the producer's tail (a hint, published every 64 records
//                     and at every batch end) and prefetches up to N lines below it ahead of its
//                     position: lines the producer has finished, so it takes none from it
//   CURSOR=0|N        the consumer publishes its cursor at the end of every poll and whenever it
//                     has read a quarter of the capacity since (0, as ShmRing), or also every N
//                     records
//   RESCAN=0|1        the producer reads the consumer's cursor when the ring is full (0), or
//                     already when a quarter of the capacity is left (1, as ShmRing)
//   PF_READ=0|K       the consumer prefetches the line K lines after each record it consumed
//   PF_WRITE=0|K      the producer prefetches for writing the line K lines after each record
//   SPIN_TAIL=0|1     the consumer waits on the producer's tail word (published after every
//                     record, as an index ring does) instead of the next record's commit word
//   ADAPTIVE=0|1      with PF_READ: prefetch only while records keep coming in this poll
//   MARKER=0|1        a batch starts with a marker record reaching to the next MARKER_SPAN boundary
//                     (64 or 128; 16 bytes at least, no payload), whose commit word is stored last, at the batch end:
//                     the consumer waits on a line the producer writes once per batch, as an
//                     index ring's consumer waits on its index (0: the batch's first record's
//                     commit word is stored last, and its line is written at the start too)
//   WAKE=0|1|2|3      wake-up support on the producer's side (docs/wakeup.md): after every publish
//                     (or batch end) it looks at a doorbell word on a line of its own that
//                     consumers write when they go to sleep (none does here); 1: after a seq_cst
//                     fence (symmetric Dekker), 2: after a compiler barrier only (the sleeper
//                     pays with membarrier), 3: as 2 but looks at SLOTS sleeping flags, one per
//                     consumer slot page, instead of one doorbell word
//   FIXED_SIZE=N      experiment (payloads of N bytes only): the consumer computes the next record's
//                     position from N, not from the length it loaded, so its loads do not depend
//                     on each other (what an index ring's consumer has)
// Usage: see harness.h. CAPACITY in bytes.
#include "common.h"
#include "CShmRingLayout.h"

#ifndef ALIGN
#define ALIGN 16
#endif
#ifndef MIX
#define MIX 0
#endif
#ifndef KEEP
#define KEEP 0
#endif
#ifndef CURSOR
#define CURSOR 0
#endif
#ifndef RESCAN
#define RESCAN 0
#endif
#ifndef PF_READ
#define PF_READ 0
#endif
#ifndef PF_WRITE
#define PF_WRITE 0
#endif
#ifndef PF_BATCH
#define PF_BATCH 0
#endif
#ifndef PF_TAIL
#define PF_TAIL 0
#endif
#ifndef SPIN_TAIL
#define SPIN_TAIL 0
#endif
#ifndef ADAPTIVE
#define ADAPTIVE 0
#endif
#ifndef MARKER
#define MARKER 0
#endif
#ifndef MARKER_SPAN
#define MARKER_SPAN 64
#endif
#ifndef WAKE
#define WAKE 0
#endif
#ifndef SLOTS
#define SLOTS 4
#endif
#ifndef RING_NAME
#define RING_NAME "commit"
#endif

#define SALT 0x5bd1e9955bd1e995ull
#define PADDING_BIT 0x8000000000000000ull
#define MARKER_BIT 0x4000000000000000ull

typedef struct {
    uint64_t commit;
    uint32_t length;
    uint32_t type;
} record_t;

typedef struct {
    _Alignas(128) uint64_t intent;  // producer line
    uint64_t tail_version, tail, tail_sequence;
    _Alignas(128) uint64_t published, published_bytes;  // counters
    _Alignas(128) uint64_t boundary[16][4];             // version, position, sequence, -
    _Alignas(128) uint64_t cursor;                      // the consumer's line
    _Alignas(128) uint64_t capacity;
    _Alignas(128) uint64_t doorbell;               // WAKE 1, 2: written by sleepers
    _Alignas(4096) uint64_t sleeping[SLOTS][512];  // WAKE 3: a flag in each slot's page
    _Alignas(4096) uint8_t data[];
} ring_t;

typedef struct {
    ring_t *ring;
    uint64_t position, sequence, mask, capacity, limit, rescan_at, intent, tail_version, last_section;
    uint64_t published, published_bytes, batch, since_tail, wakes;
    uint64_t *first;  // a batch's first commit word, stored last
    uint64_t first_value;
} producer_t;

typedef struct {
    ring_t *ring;
    uint64_t position, sequence, mask, capacity, published_cursor, tail_cache;
} consumer_t;

static size_t ring_bytes(size_t capacity) { return sizeof(ring_t) + capacity; }
static void ring_init(ring_t *ring, size_t capacity) { ring->capacity = capacity; }

static void producer_open(producer_t *p, ring_t *ring) {
    memset(p, 0, sizeof(*p));
    p->ring = ring;
    p->capacity = ring->capacity;
    p->mask = ring->capacity - 1;
    p->limit = ring->capacity;
    p->rescan_at = RESCAN ? ring->capacity * 3 / 4 : ring->capacity;
    p->last_section = UINT64_MAX;
    p->batch = 1;
}

static void producer_set_batch(producer_t *p, uint64_t batch) { p->batch = batch; }

static void consumer_open(consumer_t *c, ring_t *ring) {
    memset(c, 0, sizeof(*c));
    c->ring = ring;
    c->capacity = ring->capacity;
    c->mask = ring->capacity - 1;
}

static inline __attribute__((always_inline)) uint64_t record_word(uint64_t sequence, uint32_t length) {
#if MIX
    return CShmRing_record_word(sequence, SALT, length, 0);
#else
    (void)length;
    return sequence + 1;
#endif
}

static inline __attribute__((always_inline)) uint64_t padding_word(uint64_t sequence) {
#if MIX
    return CShmRing_padding_word(sequence, SALT);
#else
    return (sequence + 1) | PADDING_BIT;
#endif
}

/// A batch marker's commit word: the next record's sequence, a shape of its own.
static inline __attribute__((always_inline)) uint64_t marker_word(uint64_t sequence) {
#if MIX
    return CShmRing_padding_word(sequence, SALT) ^ MARKER_BIT;
#else
    return (sequence + 1) | MARKER_BIT;
#endif
}

/// The producer's tail and counters (seqlock: odd version, release fence, data, even version).
static inline __attribute__((always_inline)) void publish_tail(producer_t *p) {
    ring_t *r = p->ring;
    p->tail_version += 2;
    __atomic_store_n(&r->tail_version, p->tail_version - 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    __atomic_store_n(&r->tail, p->position, __ATOMIC_RELAXED);
    __atomic_store_n(&r->tail_sequence, p->sequence, __ATOMIC_RELAXED);
    __atomic_store_n(&r->tail_version, p->tail_version, __ATOMIC_RELEASE);
    __atomic_store_n(&r->published, p->published, __ATOMIC_RELAXED);
    __atomic_store_n(&r->published_bytes, p->published_bytes, __ATOMIC_RELAXED);
}

static inline __attribute__((always_inline)) void record_boundary(producer_t *p, uint64_t position) {
    uint64_t section = position >> (__builtin_ctzll(p->capacity) - 4);
    if (section == p->last_section) return;
    p->last_section = section;
    uint64_t *entry = p->ring->boundary[section & 15];
    uint64_t version = __atomic_load_n(&entry[0], __ATOMIC_RELAXED) | 1;
    __atomic_store_n(&entry[0], version, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    __atomic_store_n(&entry[1], position, __ATOMIC_RELAXED);
    __atomic_store_n(&entry[2], p->sequence, __ATOMIC_RELAXED);
    __atomic_store_n(&entry[0], version + 1, __ATOMIC_RELEASE);
}

/// Wake-up support: does any consumer sleep? (None does in these runs: this is the cost of asking.)
static inline __attribute__((always_inline)) void check_sleepers(producer_t *p) {
#if WAKE == 1
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (__atomic_load_n(&p->ring->doorbell, __ATOMIC_RELAXED)) p->wakes++;
#elif WAKE == 2
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    if (__atomic_load_n(&p->ring->doorbell, __ATOMIC_RELAXED)) p->wakes++;
#elif WAKE == 3
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    for (int slot = 0; slot < SLOTS; slot++)
        if (__atomic_load_n(&p->ring->sleeping[slot][0], __ATOMIC_RELAXED)) p->wakes++;
#else
    (void)p;
#endif
}

static inline __attribute__((always_inline)) void batch_end(producer_t *p) {
    if (p->first) {
        // Release: every record of the batch is visible no later than its first commit word.
        __atomic_store_n(p->first, p->first_value, __ATOMIC_RELEASE);
        p->first = NULL;
        check_sleepers(p);
    }
#if KEEP == 2 || KEEP == 3
    if (p->batch > 1) publish_tail(p);
#endif
}

static __attribute__((noinline)) int make_room(producer_t *p, uint64_t end) {
    uint64_t cursor = __atomic_load_n(&p->ring->cursor, __ATOMIC_ACQUIRE);
    p->limit = cursor + p->capacity;
    p->rescan_at = RESCAN ? p->limit - p->capacity / 4 : p->limit;
    if ((int64_t)(p->rescan_at - p->position) <= 0) p->rescan_at = p->limit;
    return (int64_t)(end - p->limit) <= 0;
}

static inline __attribute__((always_inline)) int publish(producer_t *p, const uint8_t *message, uint32_t length) {
    uint64_t size = (sizeof(record_t) + length + ALIGN - 1) & ~(uint64_t)(ALIGN - 1);
    uint64_t position = p->position;
#if MARKER
    uint64_t marker = 0;
    if (p->batch > 1 && !p->first) {
        // The batch's marker: to the next MARKER_SPAN boundary (at least 16 bytes at ALIGN 16).
        marker = MARKER_SPAN - (position & (MARKER_SPAN - 1));
        if ((int64_t)(position + marker + size - p->rescan_at) > 0 && !make_room(p, position + marker + size)) return 0;
        p->first = (uint64_t *)(p->ring->data + (position & p->mask));
        p->first_value = marker_word(p->sequence);
        position += marker;
        p->position = position;
    }
#endif
    uint64_t room = p->capacity - (position & p->mask);
    uint64_t padding = size > room ? room : 0;
    uint64_t end = position + padding + size;
    if ((int64_t)(end - p->rescan_at) > 0 && !make_room(p, end)) return 0;
#if KEEP == 1 || KEEP == 3
    if ((int64_t)(end - p->intent) > 0) {
        p->intent = end;
        __atomic_store_n(&p->ring->intent, end, __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_RELEASE);
    }
#elif KEEP == 2
    if ((int64_t)(end - p->intent) > 0) {
        p->intent = end + p->capacity / 16;  // claimed ahead: once per sixteenth of the ring
        __atomic_store_n(&p->ring->intent, p->intent, __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_RELEASE);
    }
#endif
    uint8_t *data = p->ring->data;
    if (padding) {
        __atomic_store_n((uint64_t *)(data + (position & p->mask)), padding_word(p->sequence), __ATOMIC_RELAXED);
        position += padding;
    }
    uint8_t *base = data + (position & p->mask);
#if PF_WRITE
    __builtin_prefetch(data + ((position + PF_WRITE * 64) & p->mask), 1);
#endif
#if PF_BATCH
    if (p->batch > 1) __builtin_prefetch(data + ((position + PF_BATCH * 64) & p->mask), 1);
#endif
    memcpy(base + sizeof(record_t), message, length);
    __atomic_store_n((uint64_t *)(base + 8), (uint64_t)length, __ATOMIC_RELAXED);  // length, type 0
    uint64_t word = record_word(p->sequence, length);
    if (p->batch > 1) {
        if (!MARKER && !p->first) {
            p->first = (uint64_t *)base;
            p->first_value = word;
        } else {
            __atomic_store_n((uint64_t *)base, word, __ATOMIC_RELAXED);
        }
    } else {
        // Release: the header and payload are visible no later than the commit word.
        __atomic_store_n((uint64_t *)base, word, __ATOMIC_RELEASE);
        check_sleepers(p);
    }
#if KEEP
    record_boundary(p, position);
#endif
    p->position = position + size;
    p->sequence++;
    p->published++;
    p->published_bytes += length;
#if KEEP == 1
    if (p->batch == 1) publish_tail(p);
#elif KEEP == 2 || KEEP == 3
    if (++p->since_tail >= 64) {
        p->since_tail = 0;
        if (p->batch == 1) publish_tail(p);
    }
#endif
#if SPIN_TAIL
    __atomic_store_n(&p->ring->tail, p->position, __ATOMIC_RELEASE);
#endif
    return 1;
}

static inline __attribute__((always_inline)) uint64_t poll(consumer_t *c, uint64_t limit, uint64_t *sum) {
    uint64_t count = 0, position = c->position, sequence = c->sequence;
    uint8_t *data = c->ring->data;
#if PF_TAIL
    {
        // Lines the producer has finished (below its published tail) are fetched in parallel,
        // instead of one dependent miss per record.
        uint64_t tail = __atomic_load_n(&c->ring->tail, __ATOMIC_RELAXED);
        uint64_t ahead = tail - position;
        if (ahead <= c->capacity) {
            if (ahead > PF_TAIL * 64) ahead = PF_TAIL * 64;
            for (uint64_t line = (position & ~63ull) + 64; line < position + ahead; line += 64)
                __builtin_prefetch(data + (line & c->mask), 0);
        }
    }
#endif
    while (count < limit) {
        uint64_t offset = position & c->mask;
        uint8_t *base = data + offset;
#if SPIN_TAIL
        if (position == c->tail_cache) {
            c->tail_cache = __atomic_load_n(&c->ring->tail, __ATOMIC_ACQUIRE);
            if (position == c->tail_cache) break;
        }
        uint64_t word = __atomic_load_n((uint64_t *)base, __ATOMIC_RELAXED);
#else
        uint64_t word = __atomic_load_n((uint64_t *)base, __ATOMIC_ACQUIRE);
#endif
        uint32_t length = offset + 16 <= c->capacity ? __atomic_load_n((uint32_t *)(base + 8), __ATOMIC_RELAXED) : 0;
        if (word != record_word(sequence, length)) {
#if MARKER
            if (word == marker_word(sequence)) {
                position += MARKER_SPAN - (offset & (MARKER_SPAN - 1));
                continue;
            }
#endif
            if (word != padding_word(sequence)) break;
            position += c->capacity - offset;
            continue;
        }
#ifdef FIXED_SIZE  // experiment: the next position does not depend on a loaded value
        uint64_t size = (sizeof(record_t) + FIXED_SIZE + ALIGN - 1) & ~(uint64_t)(ALIGN - 1);
        if (length != FIXED_SIZE) abort();
#else
        uint64_t size = (sizeof(record_t) + length + ALIGN - 1) & ~(uint64_t)(ALIGN - 1);
#endif
        if (length > c->capacity / 4 || offset + size > c->capacity) abort();
        uint64_t value;
        memcpy(&value, base + sizeof(record_t), 8);
        *sum += value;
        position += size;
        sequence++;
        count++;
#if PF_READ
#if ADAPTIVE
        if (count > 1)
#endif
            __builtin_prefetch(data + ((position + PF_READ * 64) & c->mask), 0);
#endif
#if CURSOR
        if (count % CURSOR == 0) {
            c->published_cursor = position;
            __atomic_store_n(&c->ring->cursor, position, __ATOMIC_RELEASE);
        }
#endif
        if (position - c->published_cursor >= c->capacity / 4) {
            // A long poll still frees space for the producer (as ShmRing: a quarter of the ring).
            c->published_cursor = position;
            __atomic_store_n(&c->ring->cursor, position, __ATOMIC_RELEASE);
        }
    }
    c->position = position;
    c->sequence = sequence;
    if (position != c->published_cursor) {
        // Release: the reads of every record before `position` happen before the producer reuses
        // the space. Partner: the producer's acquire load of the cursor in make_room.
        c->published_cursor = position;
        __atomic_store_n(&c->ring->cursor, position, __ATOMIC_RELEASE);
    }
    return count;
}

#include "harness.h"
