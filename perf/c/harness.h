// The two-process harness of the C rings in perf/c (baselines and the record-protocol study).
//
// A ring implementation defines, before including this file:
//   typedef ... ring_t;                                 the shared part (in a memfd mapping)
//   typedef ... producer_t, consumer_t;                 each side's private state
//   size_t ring_bytes(size_t capacity);                 bytes of shared memory for a ring
//   void ring_init(ring_t *, size_t capacity);          in the launcher, before the fork
//   void producer_open(producer_t *, ring_t *); void consumer_open(consumer_t *, ring_t *);
//   int publish(producer_t *, const uint8_t *message, uint32_t length);  0 if the ring is full
//   void producer_set_batch(producer_t *, uint64_t batch);  the run's batch size (1: every publish
//                                                       is visible by itself)
//   void batch_end(producer_t *);                       makes what was published visible (a no-op
//                                                       for rings where every publish is visible)
//   uint64_t poll(consumer_t *, uint64_t limit, uint64_t *sum);  messages consumed; adds the first
//                                                       8 bytes of each to *sum
//   RING_NAME                                           a string
//
// Usage: PROGRAM throughput|rtt COUNT SIZE CPU_A CPU_B CAPACITY [BATCH]
//   throughput: side A publishes COUNT messages of SIZE bytes (BATCH at a time: batch_end after
//     each BATCH), side B polls them; msgs/s from B's first message to its last.
//   rtt: A publishes one message on ring 0 and waits for B's echo on ring 1, COUNT times after
//     10 000 warm-up rounds; percentiles of the round trip.
// Per message, the producer stores the sequence number in the message's first 8 bytes and the
// ring copies SIZE bytes; the consumer reads the first 8 bytes: the work of ShmRing's ring-bench.
// The memory is a memfd mapped MAP_SHARED|MAP_POPULATE, both sides pinned, busy-spin.
#ifndef SHMRING_PERF_HARNESS_H
#define SHMRING_PERF_HARNESS_H

// IDLE_PAUSES=N (default 1): in throughput runs, the consumer pauses N times after a poll that found
// nothing, before it reads again (how hard a caught-up consumer presses on the producer's lines).
#ifndef IDLE_PAUSES
#define IDLE_PAUSES 1
#endif
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

static char *harness_shared(size_t bytes) {
    int fd = memfd_create("shmring-perf", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, (off_t)bytes) != 0) {
        perror("memfd");
        exit(1);
    }
    char *memory = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
    if (memory == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    close(fd);
    memset(memory, 0, bytes);
    return memory;
}

static size_t harness_round(size_t bytes) { return (bytes + 4095) & ~(size_t)4095; }

int main(int argc, char **argv) {
    if (argc < 7) {
        fprintf(stderr, "usage: %s throughput|rtt COUNT SIZE CPU_A CPU_B CAPACITY [BATCH]\n", argv[0]);
        return 2;
    }
    int rtt = strcmp(argv[1], "rtt") == 0;
    uint64_t count = strtoull(argv[2], 0, 10);
    uint32_t size = (uint32_t)atoi(argv[3]);
    int cpu_a = atoi(argv[4]), cpu_b = atoi(argv[5]);
    size_t capacity = strtoull(argv[6], 0, 10);
    uint64_t batch = argc > 7 ? strtoull(argv[7], 0, 10) : 1;
    if (size < 8 || size > 4096 || batch < 1) {
        fprintf(stderr, "size 8 ... 4096, batch >= 1\n");
        return 2;
    }
    size_t one = harness_round(ring_bytes(capacity));
    char *memory = harness_shared(2 * one + 4096);
    ring_t *rings[2] = {(ring_t *)memory, (ring_t *)(memory + one)};
    ring_init(rings[0], capacity);
    ring_init(rings[1], capacity);
    uint64_t warm = rtt ? 10000 : 0;
    pid_t child = fork();
    if (child == 0) {
        pin(cpu_b);
        consumer_t consumer;
        consumer_open(&consumer, rings[0]);
        uint64_t received = 0, sum = 0, start = 0;
        if (!rtt) {
            while (received < count) {
                uint64_t got = poll(&consumer, count - received, &sum);
                if (got && !received) start = now_ns();
                received += got;
                if (!got) for (int pause = 0; pause < IDLE_PAUSES; pause++) cpu_relax();
            }
            double seconds = (now_ns() - start) / 1e9;
            printf("%s size=%u capacity=%zu batch=%llu messages=%llu msgs_per_s=%.0f checksum=%llu\n", RING_NAME,
                   size, capacity, (unsigned long long)batch, (unsigned long long)count, count / seconds,
                   (unsigned long long)sum);
        } else {
            producer_t pong;
            producer_open(&pong, rings[1]);
            producer_set_batch(&pong, 1);
            uint8_t message[4096];
            memset(message, 7, sizeof(message));
            while (received < warm + count) {
                if (!poll(&consumer, 1, &sum)) {
                    cpu_relax();
                    continue;
                }
                memcpy(message, &received, 8);
                received++;
                while (!publish(&pong, message, size)) cpu_relax();
                batch_end(&pong);
            }
        }
        fflush(stdout);
        _exit(0);
    }
    pin(cpu_a);
    producer_t producer;
    producer_open(&producer, rings[0]);
    producer_set_batch(&producer, rtt ? 1 : batch);
    uint8_t message[4096];
    memset(message, 7, sizeof(message));
    if (!rtt) {
        for (uint64_t i = 0; i < count;) {
            uint64_t end = i + batch < count ? i + batch : count;
            for (; i < end; i++) {
                memcpy(message, &i, 8);
                while (!publish(&producer, message, size)) {
                    batch_end(&producer);  // what is published must become visible to free space
                    cpu_relax();
                }
            }
            batch_end(&producer);
        }
    } else {
        consumer_t echo;
        consumer_open(&echo, rings[1]);
        uint64_t *samples = malloc(count * sizeof(uint64_t)), sum = 0;
        for (uint64_t i = 0; i < warm + count; i++) {
            uint64_t start = now_ns();
            memcpy(message, &i, 8);
            while (!publish(&producer, message, size)) cpu_relax();
            batch_end(&producer);
            while (!poll(&echo, 1, &sum)) cpu_relax();
            if (i >= warm) samples[i - warm] = now_ns() - start;
        }
        char name[128];
        snprintf(name, sizeof(name), "%s size=%u capacity=%zu", RING_NAME, size, capacity);
        print_percentiles(name, samples, count);
        free(samples);
    }
    waitpid(child, 0, 0);
    return 0;
}

#endif
