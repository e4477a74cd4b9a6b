// The C twin of ShmRing's ring: the same layout (CShmRingLayout.h), record format and commit
// protocol, the same producer bookkeeping per message (tail intent, commit word with release,
// boundary index; the tail seqlock and counters every 64 records or a sixteenth of the ring and
// at the end of a batch, as layout 4; -DTWIN_NO_LOSSY_INDEX leaves out the tail intent and the
// boundary index, to measure what lossy readers cost the producer) and the same gating (a rescan at the low watermark with
// the seq_cst handshake), one gating consumer that publishes its cursor once per poll.
// Usage: twin throughput MESSAGES SIZE CPU_A CPU_B [ALIGNMENT [BATCH]]
//        twin rtt ROUNDS SIZE CPU_A CPU_B [ALIGNMENT]
#include "common.h"
#include "CShmRingLayout.h"

#define CAPACITY (1u << 20)

typedef struct {
    char *header;
    char *data;
    CShmRing_slot *slot;
    uint64_t mask, salt;
    uint32_t alignment;
    // producer state
    uint64_t position, sequence, limit, rescan_at, last_section, tail_version, published, published_bytes, intent;
    uint64_t tail_published_count, tail_published_position;
    // consumer state
    uint64_t c_position, c_sequence, c_published;
} ring;

static inline CShmRing_header *hdr(ring *r) { return (CShmRing_header *)r->header; }

static void ring_init(ring *r, char *memory, CShmRing_slot *slot, uint32_t alignment) {
    memset(r, 0, sizeof(*r));
    r->header = memory;
    r->data = memory + CSHMRING_DATA_OFFSET;
    r->slot = slot;
    r->mask = CAPACITY - 1;
    r->salt = 0x5bd1e9955bd1e995ull;
    r->alignment = alignment;
    r->limit = CAPACITY;
    r->rescan_at = CAPACITY * 3 / 4;
    r->last_section = UINT64_MAX;
    slot->generation = 1;
    slot->policy = 1;
    __atomic_store_n(&slot->active, 1, __ATOMIC_SEQ_CST);
}

static inline uint64_t padding_word(ring *r, uint64_t sequence) { return CShmRing_padding_word(sequence, r->salt); }

static inline uint64_t record_word(ring *r, uint64_t sequence, uint32_t length, uint32_t type) {
    return CShmRing_record_word(sequence, r->salt, length, type);
}

static inline uint64_t record_size(ring *r, uint64_t length) {
    return (CSHMRING_RECORD_HEADER + length + r->alignment - 1) & ~(uint64_t)(r->alignment - 1);
}

static uint64_t gating_minimum(ring *r) {
    CShmRing_slot *s = r->slot;
    uint64_t generation = __atomic_load_n(&s->generation, __ATOMIC_ACQUIRE);
    uint64_t active = __atomic_load_n(&s->active, __ATOMIC_SEQ_CST);
    if (generation == 0 || active != generation || __atomic_load_n(&s->policy, __ATOMIC_RELAXED) != 1) return r->position;
    uint64_t cursor = __atomic_load_n(&s->cursor, __ATOMIC_ACQUIRE);
    uint64_t lag = r->position - cursor;
    return lag <= CAPACITY ? cursor : r->position;
}

__attribute__((noinline)) static int make_room(ring *r, uint64_t end) {
    // (ShmRing also publishes its tail here, outside batches: once per quarter ring, left out.)
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    uint64_t first = gating_minimum(r);
    __atomic_store_n(&hdr(r)->producer.limit, first + CAPACITY, __ATOMIC_SEQ_CST);
    uint64_t second = gating_minimum(r);
    uint64_t minimum = (int64_t)(second - first) < 0 ? second : first;
    uint64_t limit = minimum + CAPACITY;
    if (minimum != first) __atomic_store_n(&hdr(r)->producer.limit, limit, __ATOMIC_SEQ_CST);
    r->limit = limit;
    uint64_t watermark = limit - CAPACITY / 4;
    r->rescan_at = (int64_t)(watermark - r->position) > 0 ? watermark : limit;
    if ((int64_t)(end - limit) > 0) {
        __atomic_store_n(&hdr(r)->counters.back_pressure_events, hdr(r)->counters.back_pressure_events + 1, __ATOMIC_RELAXED);
        return 0;
    }
    return 1;
}

static inline void publish_tail(ring *r) {
    r->tail_published_count = r->published;
    r->tail_published_position = r->position;
    uint64_t version = r->tail_version + 2;
    r->tail_version = version;
    CShmRing_producer *p = &hdr(r)->producer;
    __atomic_store_n(&p->tail_version, version - 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    __atomic_store_n(&p->tail, r->position, __ATOMIC_RELAXED);
    __atomic_store_n(&p->tail_sequence, r->sequence, __ATOMIC_RELAXED);
    __atomic_store_n(&p->tail_version, version, __ATOMIC_RELEASE);
    __atomic_store_n(&hdr(r)->counters.published_messages, r->published, __ATOMIC_RELAXED);
    __atomic_store_n(&hdr(r)->counters.published_bytes, r->published_bytes, __ATOMIC_RELAXED);
}

__attribute__((noinline)) static void record_boundary(ring *r, uint64_t position, uint64_t sequence, uint64_t section) {
    r->last_section = section;
    CShmRing_boundary *b = &hdr(r)->boundaries[section & 15];
    uint64_t version = __atomic_load_n(&b->version, __ATOMIC_RELAXED) | 1;
    __atomic_store_n(&b->version, version, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    __atomic_store_n(&b->position, position, __ATOMIC_RELAXED);
    __atomic_store_n(&b->sequence, sequence, __ATOMIC_RELAXED);
    __atomic_store_n(&b->version, version + 1, __ATOMIC_RELEASE);
}

/// Publishes one message; 0 when back-pressured. Inside a batch (`first` not NULL), the first
/// commit word is kept for the end and the others are stored relaxed, and the tail is not
/// published: exactly ShmRing's batch.
static inline int publish_in(ring *r, const void *bytes, uint32_t length, uint64_t **first, uint64_t *first_value) {
    uint64_t size = record_size(r, length);
    uint64_t position = r->position;
    uint64_t room = CAPACITY - (position & r->mask);
    uint64_t padding = size > room ? room : 0;
    uint64_t end = position + padding + size;
    if ((int64_t)(end - r->rescan_at) > 0 && !make_room(r, end)) return 0;
#ifndef TWIN_NO_LOSSY_INDEX
    // Lap detection for lossy readers: ShmRing stores the tail intent only when it moves
    // forward, then a release fence (a compiler barrier on x86-64).
    if ((int64_t)(end - r->intent) > 0) {
        r->intent = end;
        __atomic_store_n(&hdr(r)->producer.tail_intent, end, __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_RELEASE);
    }
#endif
    if (padding) {
        __atomic_store_n((uint64_t *)(r->data + (position & r->mask)), padding_word(r, r->sequence), __ATOMIC_RELAXED);
        position += padding;
        r->position = position;
    }
    char *base = r->data + (position & r->mask);
    // Every word whole, as ShmRing: the payload's last partial word is zeroed first, and length
    // and type go in as one word.
    if (length & 7) __atomic_store_n((uint64_t *)(base + CSHMRING_RECORD_HEADER + (length & ~7u)), 0, __ATOMIC_RELAXED);
    memcpy(base + CSHMRING_RECORD_HEADER, bytes, length);
    CShmRing_record *record = (CShmRing_record *)base;
    uint64_t header = CShmRing_header_word(length, 0);
    __atomic_store_n((uint64_t *)&record->length, header, __ATOMIC_RELAXED);
    if (first == NULL) {
        __atomic_store_n(&record->commit, record_word(r, r->sequence, length, 0), __ATOMIC_RELEASE);
    } else if (*first == NULL) {
        *first = &record->commit;
        *first_value = record_word(r, r->sequence, length, 0);
    } else {
        __atomic_store_n(&record->commit, record_word(r, r->sequence, length, 0), __ATOMIC_RELAXED);
    }
#ifndef TWIN_NO_LOSSY_INDEX
    uint64_t section = position >> (__builtin_ctz(CAPACITY) - 4);
    if (section != r->last_section) record_boundary(r, position, r->sequence, section);
#endif
    r->position = position + size;
    r->sequence = (r->sequence + 1) & CSHMRING_SEQUENCE_MASK;
    r->published++;
    r->published_bytes += length;
    // Layout 4: the tail and counters every 64 records or a sixteenth of the ring (RingWriter).
    if (first == NULL && (r->published - r->tail_published_count >= 64
                          || r->position - r->tail_published_position >= CAPACITY / 16))
        publish_tail(r);
    return 1;
}

static inline int publish(ring *r, const void *bytes, uint32_t length) { return publish_in(r, bytes, length, NULL, NULL); }

/// Publishes up to `count` messages as one batch; returns how many went in.
static inline uint64_t publish_batch(ring *r, char *payload, uint32_t length, uint64_t count, uint64_t base) {
    uint64_t *first = NULL, first_value = 0, done = 0;
    while (done < count) {
        uint64_t value = base + done;
        memcpy(payload, &value, 8);
        if (!publish_in(r, payload, length, &first, &first_value)) break;
        done++;
    }
    if (first) __atomic_store_n(first, first_value, __ATOMIC_RELEASE);
    publish_tail(r);
    return done;
}

/// Polls up to `limit` messages, adding the first 8 bytes of each to *sum; returns the count.
static inline uint64_t poll(ring *r, uint64_t limit, uint64_t *sum) {
    uint64_t count = 0;
    uint64_t position = r->c_position, sequence = r->c_sequence;
    while (count < limit) {
        uint64_t offset = position & r->mask;
        char *base = r->data + offset;
        uint64_t rest = __atomic_load_n((uint64_t *)base, __ATOMIC_ACQUIRE) ^ CShmRing_sequence_mix(sequence ^ r->salt);
        uint64_t header = __atomic_load_n((uint64_t *)&((CShmRing_record *)base)->length, __ATOMIC_RELAXED);
        uint32_t length = (uint32_t)header;
        if (rest != CShmRing_header_shape(header)) {
            if (rest != CSHMRING_PADDING_SHAPE) break;
            position += CAPACITY - offset;
            continue;
        }
        uint64_t size = record_size(r, length);
        if (length > CAPACITY / 4 || offset + size > CAPACITY) abort();
        uint64_t value;
        memcpy(&value, base + CSHMRING_RECORD_HEADER, 8);
        *sum += value;
        position += size;
        sequence = (sequence + 1) & CSHMRING_SEQUENCE_MASK;
        count++;
        if (position - r->c_published >= CAPACITY / 4) {
            r->c_published = position;
            __atomic_store_n(&r->slot->cursor, position, __ATOMIC_RELEASE);
        }
    }
    r->c_position = position;
    r->c_sequence = sequence;
    if (position != r->c_published) {
        r->c_published = position;
        __atomic_store_n(&r->slot->cursor, position, __ATOMIC_RELEASE);
        __atomic_store_n(&r->slot->delivered, r->slot->delivered + count, __ATOMIC_RELAXED);
    }
    return count;
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: twin throughput|rtt COUNT SIZE CPU_A CPU_B [ALIGNMENT]\n");
        return 2;
    }
    int rtt = strcmp(argv[1], "rtt") == 0;
    if (strcmp(argv[1], "inprocess") == 0) {
        // One process publishing and polling in turn: instruction counts under callgrind.
        uint64_t count = strtoull(argv[2], 0, 10);
        uint32_t size = (uint32_t)atoi(argv[3]);
        char *memory = shared_memory(CSHMRING_DATA_OFFSET + CAPACITY);
        CShmRing_slot *slot = shared_memory(4096);
        ring r;
        ring_init(&r, memory, slot, argc > 6 ? (uint32_t)atoi(argv[6]) : 16);
        char payload[65536];
        memset(payload, 7, sizeof(payload));
        uint64_t sum = 0;
        for (uint64_t i = 0; i < count; i++) {
            if (!publish(&r, payload, size)) abort();
            if (poll(&r, 1, &sum) != 1) abort();
        }
        printf("twin inprocess %llu\n", (unsigned long long)sum);
        return 0;
    }
    uint64_t count = strtoull(argv[2], 0, 10);
    uint32_t size = (uint32_t)atoi(argv[3]);
    int cpu_a = atoi(argv[4]), cpu_b = atoi(argv[5]);
    uint32_t alignment = argc > 6 ? (uint32_t)atoi(argv[6]) : 16;
    uint64_t batch = argc > 7 ? strtoull(argv[7], 0, 10) : 1;
    size_t bytes = CSHMRING_DATA_OFFSET + CAPACITY;
    char *memory_a = shared_memory(bytes), *memory_b = shared_memory(bytes);
    CShmRing_slot *slots = shared_memory(2 * 4096);
    ring ring_a, ring_b;  // a: A -> B; b: B -> A (rtt only)
    ring_init(&ring_a, memory_a, &slots[0], alignment);
    ring_init(&ring_b, memory_b, (CShmRing_slot *)((char *)slots + 4096), alignment);
    char payload[65536];
    memset(payload, 7, sizeof(payload));
    pid_t child = fork();
    if (child == 0) {
        pin(cpu_b);
        uint64_t sum = 0, received = 0, start = 0;
        if (!rtt) {
            while (received < count) {
                uint64_t got = poll(&ring_a, UINT64_MAX, &sum);
                if (got && received == 0) start = now_ns();
                received += got;
                if (!got) cpu_relax();
            }
            uint64_t elapsed = now_ns() - start;
            printf("twin size=%u alignment=%u batch=%llu messages=%llu msgs_per_s=%.0f bytes_per_s=%.0f\n", size,
                   alignment, (unsigned long long)batch, (unsigned long long)count, count / (elapsed / 1e9),
                   (double)count * size / (elapsed / 1e9));
        } else {
            while (received < count) {
                uint64_t got = poll(&ring_a, 1, &sum);
                if (!got) {
                    cpu_relax();
                    continue;
                }
                received++;
                while (!publish(&ring_b, payload, size)) cpu_relax();
            }
        }
        fflush(stdout);
        _exit(0);
    }
    pin(cpu_a);
    if (!rtt && batch > 1) {
        for (uint64_t i = 0; i < count;) {
            uint64_t n = count - i < batch ? count - i : batch;
            uint64_t done = publish_batch(&ring_a, payload, size, n, i);
            if (!done) cpu_relax();
            i += done;
        }
    } else if (!rtt) {
        for (uint64_t i = 0; i < count; i++) {
            memcpy(payload, &i, 8);
            while (!publish(&ring_a, payload, size)) cpu_relax();
        }
    } else {
        uint64_t *samples = malloc(count * sizeof(uint64_t)), sum = 0;
        for (uint64_t i = 0; i < count; i++) {
            uint64_t start = now_ns();
            while (!publish(&ring_a, payload, size)) cpu_relax();
            while (!poll(&ring_b, 1, &sum)) cpu_relax();
            samples[i] = now_ns() - start;
        }
        print_percentiles("twin", samples, count);
    }
    waitpid(child, 0, 0);
    return 0;
}
