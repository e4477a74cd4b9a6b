// Shared helpers of the C baselines: pinning, timing, a shared anonymous mapping, fork.
#ifndef SHMRING_PERF_COMMON_H
#define SHMRING_PERF_COMMON_H
#define _GNU_SOURCE
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static inline void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof(set), &set) != 0) perror("sched_setaffinity");
}

static inline uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static inline void *shared_memory(size_t size) {
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    memset(p, 0, size);
    return p;
}

static inline void cpu_relax(void) { __builtin_ia32_pause(); }

static int compare_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/// Prints p50, p99, p99.9 of `n` samples (sorted in place) in ns.
static inline void print_percentiles(const char *name, uint64_t *samples, size_t n) {
    qsort(samples, n, sizeof(uint64_t), compare_u64);
    printf("%s rtt_p50_ns=%llu rtt_p99_ns=%llu rtt_p999_ns=%llu samples=%zu\n", name,
           (unsigned long long)samples[n / 2], (unsigned long long)samples[n * 99 / 100],
           (unsigned long long)samples[n * 999 / 1000], n);
}
#endif
