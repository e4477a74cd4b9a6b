// The C twin of ShmRing's ring (Sources/CShmBench/twin_ring.h: the layout, record format, commit
// protocol, producer bookkeeping and gating of ShmRing; -DTWIN_NO_LOSSY_INDEX leaves out the tail
// intent and the boundary index, to measure what lossy readers cost the producer), driven by the
// record-protocol study: one gating consumer that publishes its cursor once per poll.
// Build: gcc -O2 -I Sources/CShmAtomics/include -I Sources/CShmBench perf/c/twin.c
// Usage: twin throughput MESSAGES SIZE CPU_A CPU_B [ALIGNMENT [BATCH]]
//        twin rtt ROUNDS SIZE CPU_A CPU_B [ALIGNMENT]
//        twin inprocess MESSAGES SIZE 0 0 [ALIGNMENT]   (one process publishing and polling in turn)
#include "common.h"
#include "twin_ring.h"

#define CAPACITY TWIN_CAPACITY

typedef twin_ring ring;

static void ring_init(ring *r, char *memory, CShmRing_slot *slot, uint32_t alignment) {
    twin_slot_activate(slot);
    twin_ring_open(r, memory, slot, alignment);
}

static inline int publish(ring *r, const void *bytes, uint32_t length) {
    return twin_publish(r, (const uint8_t *)bytes, length);
}

/// Publishes up to `count` messages as one batch; returns how many went in.
static inline uint64_t publish_batch(ring *r, char *payload, uint32_t length, uint64_t count, uint64_t base) {
    uint64_t done = 0;
    r->batched = 1;
    while (done < count) {
        uint64_t value = base + done;
        memcpy(payload, &value, 8);
        if (!twin_publish(r, (const uint8_t *)payload, length)) break;
        done++;
    }
    twin_end_batch(r);
    r->batched = 0;
    return done;
}

/// Polls up to `limit` messages, adding the first 8 bytes of each to *sum; returns the count. The
/// cursor goes out every quarter ring and at the end of the poll.
static inline uint64_t poll(ring *r, uint64_t limit, uint64_t *sum) {
    uint64_t count = 0;
    uint32_t length;
    const char *payload;
    while (count < limit && (payload = twin_next(r, &length)) != NULL) {
        uint64_t value;
        memcpy(&value, payload, 8);
        *sum += value;
        count++;
        if (r->c_position - r->c_published >= CAPACITY / 4) twin_publish_cursor(r);
    }
    if (count) {
        twin_publish_cursor(r);
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
