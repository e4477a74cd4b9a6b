// The loops of every scenario, for one transport: the C baselines include it once per system,
// and so do the programs of perf/peers (C or C++), so that every system runs the same loops,
// clocks and checks. ShmRing's own roles (Sources/shmring/Bench/ShmRingRoles.swift) follow the
// same steps in Swift.
//
// Before including it, define BENCH_TRANSPORT (a C identifier, e.g. plain_ring) and:
//   typedef struct { ... } plain_ring_ctx;
//   static int plain_ring_open(plain_ring_ctx *, const CShmBench_params *);  0, or fails itself
//   static void plain_ring_send(plain_ring_ctx *, const uint8_t *message, uint32_t size);
//       hands one message to the other side (to every consumer in fanout), waiting while full
//   static void plain_ring_flush(plain_ring_ctx *);  makes what was sent visible (batches)
//   static void plain_ring_recv(plain_ring_ctx *, uint8_t *message, uint32_t size);
//       waits for the next message and copies it to `message`
// It defines `int CShmBench_run_plain_ring(const CShmBench_params *)`: runs the role `p` names
// and returns its exit status.
//
// Every role: open, pin, say ready, wait for the start (CShmBench_ready). Then:
//   throughput  the producer sends sequenced messages (flushing every `batch`) until the duration
//               ends, then a stop mark; the consumer checks the order, and its clock runs from
//               the first message to the stop mark.
//   rtt-*       the pinger sends one message and waits for its echo: 10 000 rounds (or a fifth of
//               the duration) of warm-up, then one sample per round trip until the duration ends.
//               Both sides count their voluntary context switches (the hops that slept), and
//               so do the consumers of the other scenarios (how often they slept).
//   latency     the producer sends at `rate`, each message stamped with its intended send time
//               (paced by spinning on the clock; late messages go at once, keeping their stamps);
//               the consumer's sample is its receive time minus that stamp.
//   fanout      the producer sends at full speed for half the duration, then a probe that every
//               consumer acknowledges (the end of the measured interval); then, for the other
//               half, one probe at a time, timed until every consumer has acknowledged it.
#include "CShmBench.h"

#define BENCH_CAT2(a, b) a##b
#define BENCH_CAT(a, b) BENCH_CAT2(a, b)
#define BENCH_F(name) BENCH_CAT(BENCH_TRANSPORT, name)

static inline uint64_t bench_word(const uint8_t *message, int index) {
    uint64_t value;
    memcpy(&value, message + 8 * index, 8);
    return value;
}

static inline void bench_set_word(uint8_t *message, int index, uint64_t value) { memcpy(message + 8 * index, &value, 8); }

static inline uint64_t bench_deadline(const CShmBench_params *p, uint64_t start, uint64_t nanoseconds) {
    return start + (uint64_t)((double)nanoseconds * p->ticks_per_ns);
}

int BENCH_CAT(CShmBench_run_, BENCH_TRANSPORT)(const CShmBench_params *p) {
    static BENCH_F(_ctx) context;
    static uint8_t message[CSHMBENCH_MAX_SIZE];
    CShmBench_shared *shared = p->shared;
    memset(message, 7, sizeof(message));
    if (BENCH_F(_open)(&context, p) != 0) return 1;
    int sampling = CShmBench_samples_here(p);
    if (sampling) CShmBench_prefault(shared);
    uint64_t *samples = CShmBench_samples(shared);
    uint64_t capacity = shared->sample_capacity;
    const int tsc = p->use_tsc;
    CShmBench_ready(p);
    uint64_t start = CShmBench_ticks(tsc);
    uint64_t deadline = bench_deadline(p, start, p->duration_ns);
    if (p->role != 0) {
        // A consumer (throughput, latency, fanout) or the echoing side of a round trip.
        int echo = CShmBench_round_trip(p);
        uint64_t switches = CShmBench_voluntary_switches();
        uint64_t expected = 1, count = 0, errors = 0, first = 0, last_received = 0;
        for (;;) {
            BENCH_F(_recv)(&context, message, p->size);
            uint64_t word = bench_word(message, 0);
            if (word == CSHMBENCH_STOP) break;
            if (echo) {
                BENCH_F(_send)(&context, message, p->size);
                BENCH_F(_flush)(&context);
                continue;
            }
            if (word & CSHMBENCH_PROBE) {
                CShmBench_add(&shared->acks, 1);
                continue;
            }
            if (word != expected) errors++;
            expected = word + 1;
            if (p->scenario == CSHMBENCH_LATENCY) {
                // From the intended send time (0 if the TSCs of the two CPUs disagree).
                uint64_t now = CShmBench_ticks(tsc), intended = bench_word(message, 1);
                if (count == 0) first = intended;
                if (count < capacity) samples[count] = now > intended ? now - intended : 0;
                last_received = now;
            } else if (count == 0) {
                first = CShmBench_ticks(tsc);
            }
            count++;
        }
        uint64_t last = CShmBench_ticks(tsc);
        CShmBench_add(&shared->switches, CShmBench_voluntary_switches() - switches);
        if (!echo) {
            CShmBench_add(&shared->received, count);
            // throughput: from the first message to the stop mark; latency: from the first
            // intended send time to the last receipt (the rate achieved).
            if (p->scenario == CSHMBENCH_THROUGHPUT || p->scenario == CSHMBENCH_LATENCY) {
                shared->first_ticks = first;
                shared->last_ticks = p->scenario == CSHMBENCH_LATENCY ? last_received : last;
            }
            if (p->scenario == CSHMBENCH_LATENCY) shared->sample_count = count < capacity ? count : capacity;
        }
        if (errors) CShmBench_add(&shared->errors, errors);
        return 0;
    }
    uint64_t sequence = 1, samples_taken = 0;
    switch (p->scenario) {
    case CSHMBENCH_THROUGHPUT: {
        // The clock is read every 256 messages or so (a countdown: no division per message).
        uint64_t check_every = p->batch >= 256 ? 1 : 256 / p->batch, countdown = check_every;
        for (;;) {
            for (uint32_t index = 0; index < p->batch; index++) {
                bench_set_word(message, 0, sequence++);
                BENCH_F(_send)(&context, message, p->size);
            }
            BENCH_F(_flush)(&context);
            if (--countdown == 0) {
                if (CShmBench_ticks(tsc) >= deadline) break;
                countdown = check_every;
            }
        }
        shared->sent = sequence - 1;
        break;
    }
    case CSHMBENCH_RTT_SPIN:
    case CSHMBENCH_RTT_BLOCK: {
        uint64_t switches = CShmBench_voluntary_switches();
        uint64_t warm_until = bench_deadline(p, start, p->duration_ns / 5), now = start;
        for (;;) {
            uint64_t begin = now;
            bench_set_word(message, 0, sequence);
            BENCH_F(_send)(&context, message, p->size);
            BENCH_F(_flush)(&context);
            BENCH_F(_recv)(&context, message, p->size);
            now = CShmBench_ticks(tsc);
            if (bench_word(message, 0) != sequence) CShmBench_add(&shared->errors, 1);
            sequence++;
            if (sequence > 10000 || now >= warm_until) {
                if (samples_taken < capacity) samples[samples_taken++] = now - begin;
                if (now >= deadline || samples_taken == capacity) break;
            }
            now = CShmBench_ticks(tsc);
        }
        shared->hops = 2 * (sequence - 1);
        CShmBench_add(&shared->switches, CShmBench_voluntary_switches() - switches);
        break;
    }
    case CSHMBENCH_LATENCY: {
        uint64_t count = (uint64_t)((double)p->rate * (double)p->duration_ns / 1e9);
        double interval = p->ticks_per_ns * 1e9 / (double)p->rate;
        // 1 ms after the start: every role is surely running (they leave their start wait
        // within about 100 µs of each other).
        uint64_t first = CShmBench_ticks(tsc) + bench_deadline(p, 0, 1000000);
        for (uint64_t index = 0; index < count; index++) {
            uint64_t intended = first + (uint64_t)((double)index * interval);
            while (CShmBench_ticks(tsc) < intended) CShmBench_pause();
            if (p->stall_ns && index == count / 2) CShmBench_sleep_ns(p->stall_ns);
            bench_set_word(message, 0, sequence++);
            bench_set_word(message, 1, intended);
            BENCH_F(_send)(&context, message, p->size);
            BENCH_F(_flush)(&context);
        }
        shared->sent = count;
        break;
    }
    case CSHMBENCH_FANOUT: {
        uint64_t consumers = (uint64_t)p->consumers, round = 0;
        uint64_t half = bench_deadline(p, start, p->duration_ns / 2);
        shared->first_ticks = start;
        for (;;) {
            bench_set_word(message, 0, sequence++);
            BENCH_F(_send)(&context, message, p->size);
            BENCH_F(_flush)(&context);
            if (++round % 256 == 0 && CShmBench_ticks(tsc) >= half) break;
        }
        shared->sent = sequence - 1;
        uint64_t probes = 0;
        for (;;) {
            uint64_t begin = CShmBench_ticks(tsc);
            bench_set_word(message, 0, CSHMBENCH_PROBE | sequence);
            BENCH_F(_send)(&context, message, p->size);
            BENCH_F(_flush)(&context);
            probes++;
            // Acquire: pairs with each consumer's add to `acks` (CShmBench.h).
            while (CShmBench_load_acquire(&shared->acks) < probes * consumers) CShmBench_pause();
            uint64_t now = CShmBench_ticks(tsc);
            if (probes == 1) {
                shared->last_ticks = now;  // the full-speed phase is delivered to every consumer
                continue;
            }
            if (samples_taken < capacity) samples[samples_taken++] = now - begin;
            if (now >= deadline || samples_taken == capacity) break;
        }
        break;
    }
    default:
        CShmBench_fail(shared, "unknown scenario %d", p->scenario);
    }
    if (sampling) shared->sample_count = samples_taken;
    bench_set_word(message, 0, CSHMBENCH_STOP);
    BENCH_F(_send)(&context, message, p->size);
    BENCH_F(_flush)(&context);
    return 0;
}
