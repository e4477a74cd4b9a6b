// The command's side of the C baselines: dispatch by name, the kernel objects of a run, the
// clock's calibration, the placement probe and spawning a role with its descriptors.
#include "CShmBench.h"
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <spawn.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>

int CShmBench_run_line_floor(const CShmBench_params *p);
int CShmBench_run_plain_ring(const CShmBench_params *p);
int CShmBench_run_twin(const CShmBench_params *p);
int CShmBench_run_pipe(const CShmBench_params *p);
int CShmBench_run_unix_socket(const CShmBench_params *p);
int CShmBench_run_eventfd(const CShmBench_params *p);
int CShmBench_run_futex(const CShmBench_params *p);
size_t CShmBench_plain_ring_bytes(uint32_t size);
size_t CShmBench_twin_bytes(void);
void CShmBench_twin_initialize(char *memory);

int CShmBench_run(const char *system, const CShmBench_params *p) {
    if (strcmp(system, "line-floor") == 0) return CShmBench_run_line_floor(p);
    if (strcmp(system, "plain-ring") == 0) return CShmBench_run_plain_ring(p);
    if (strcmp(system, "c-twin") == 0) return CShmBench_run_twin(p);
    if (strcmp(system, "pipe") == 0) return CShmBench_run_pipe(p);
    if (strcmp(system, "unix-socket") == 0) return CShmBench_run_unix_socket(p);
    if (strcmp(system, "eventfd") == 0) return CShmBench_run_eventfd(p);
    if (strcmp(system, "futex") == 0) return CShmBench_run_futex(p);
    fprintf(stderr, "bench role: unknown C system %s\n", system);
    return 2;
}

/// A memfd of `bytes`, allocated now (no SIGBUS later), or -errno.
static int bench_memfd(const char *name, size_t bytes) {
    int fd = memfd_create(name, MFD_CLOEXEC);
    if (fd < 0) return -errno;
    if (ftruncate(fd, (off_t)bytes) != 0 || fallocate(fd, 0, 0, (off_t)bytes) != 0) {
        int error = errno;
        close(fd);
        return -error;
    }
    return fd;
}

int CShmBench_prepare(const char *system, int scenario, int consumers, uint32_t size, uint32_t batch, int *fds,
                      int capacity) {
    (void)batch;
    int count = 0;
#define BENCH_NEED(n) \
    if (count + (n) > capacity) return -EINVAL
    // On an error, what was made so far is closed.
#define BENCH_FAIL(error)                                          \
    do {                                                           \
        int saved = (error);                                       \
        for (int made = 0; made < count; made++) close(fds[made]); \
        return -saved;                                             \
    } while (0)
    if (strcmp(system, "line-floor") == 0 || strcmp(system, "plain-ring") == 0 || strcmp(system, "c-twin") == 0
        || strcmp(system, "futex") == 0) {
        BENCH_NEED(1);
        size_t bytes = strcmp(system, "plain-ring") == 0 ? CShmBench_plain_ring_bytes(size)
                       : strcmp(system, "c-twin") == 0   ? CShmBench_twin_bytes()
                       : strcmp(system, "futex") == 0    ? 4096
                                                         : 8192;
        int fd = bench_memfd(system, bytes);
        if (fd < 0) return fd;
        if (strcmp(system, "c-twin") == 0) {
            char *memory = (char *)mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
            if (memory == MAP_FAILED) {
                int error = errno;
                close(fd);
                return -error;
            }
            CShmBench_twin_initialize(memory);
            munmap(memory, bytes);
        }
        fds[count++] = fd;
    } else if (strcmp(system, "pipe") == 0) {
        int rtt = scenario == CSHMBENCH_RTT_SPIN || scenario == CSHMBENCH_RTT_BLOCK;
        int pipes = rtt ? 2 : scenario == CSHMBENCH_FANOUT ? consumers : 1;
        BENCH_NEED(2 * pipes);
        for (int index = 0; index < pipes; index++) {
            if (pipe2(&fds[count], O_CLOEXEC) != 0) BENCH_FAIL(errno);
            count += 2;
        }
    } else if (strcmp(system, "unix-socket") == 0) {
        BENCH_NEED(2);
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, &fds[count]) != 0) return -errno;
        count += 2;
    } else if (strcmp(system, "eventfd") == 0) {
        BENCH_NEED(2);
        for (int index = 0; index < 2; index++) {
            int fd = eventfd(0, EFD_CLOEXEC);
            if (fd < 0) BENCH_FAIL(errno);
            fds[count++] = fd;
        }
    }
#undef BENCH_NEED
#undef BENCH_FAIL
    return count;
}

int CShmBench_shared_create(uint64_t sample_capacity, CShmBench_shared **shared, size_t *bytes) {
    *bytes = CSHMBENCH_SAMPLES_OFFSET + 8 * (size_t)sample_capacity;
    int fd = memfd_create("shmring-bench", MFD_CLOEXEC);
    if (fd < 0) return -errno;
    void *memory = MAP_FAILED;
    // Allocated now: too large a run is an error here, not the OOM killer in a role.
    if (ftruncate(fd, (off_t)*bytes) == 0 && fallocate(fd, 0, 0, (off_t)*bytes) == 0)
        memory = mmap(NULL, *bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (memory == MAP_FAILED) {
        int error = errno;
        close(fd);
        return -error;
    }
    *shared = (CShmBench_shared *)memory;
    (*shared)->sample_capacity = sample_capacity;
    return fd;
}

static uint64_t bench_raw_ns(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC_RAW, &now);
    return (uint64_t)now.tv_sec * 1000000000ull + (uint64_t)now.tv_nsec;
}

double CShmBench_calibrate(uint64_t window_ns) {
    // Each end is the TSC read between two clock reads, taken from the tightest of 5 tries.
    uint64_t tsc[2] = {0, 0}, ns[2] = {0, 0};
    for (int end = 0; end < 2; end++) {
        uint64_t best = UINT64_MAX;
        for (int attempt = 0; attempt < 5; attempt++) {
            uint64_t before = bench_raw_ns();
            uint64_t ticks = CShmBench_rdtsc();
            uint64_t after = bench_raw_ns();
            if (after - before < best) {
                best = after - before;
                tsc[end] = ticks;
                ns[end] = before + (after - before) / 2;
            }
        }
        if (end == 0) {
            uint64_t until = bench_raw_ns() + window_ns;
            while (bench_raw_ns() < until) CShmBench_pause();
        }
    }
    return ns[1] > ns[0] ? (double)(tsc[1] - tsc[0]) / (double)(ns[1] - ns[0]) : 0;
}

// The placement probe: `ping` (the caller's release store, the echo's acquire load) and `pong`
// (the reverse) carry the round number; `pinned` goes to -1 with release when either side could
// not pin, and both sides' acquire loads of it end the probe.
typedef struct {
    uint64_t ping, pad0[15], pong, pad1[15];
    int cpu, rounds, pinned;
} bench_probe;

static void *bench_probe_echo(void *argument) {
    bench_probe *probe = (bench_probe *)argument;
    if (CShmBench_pin(probe->cpu) != 0) __atomic_store_n(&probe->pinned, -1, __ATOMIC_RELEASE);
    for (uint64_t round = 1; round <= (uint64_t)probe->rounds; round++) {
        while (__atomic_load_n(&probe->ping, __ATOMIC_ACQUIRE) != round) {
            if (__atomic_load_n(&probe->pinned, __ATOMIC_ACQUIRE) < 0) return NULL;
            CShmBench_pause();
        }
        __atomic_store_n(&probe->pong, round, __ATOMIC_RELEASE);
    }
    return NULL;
}

static int bench_compare(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

uint64_t CShmBench_probe_placement(int cpu_a, int cpu_b, int rounds) {
    static bench_probe probe __attribute__((aligned(128)));
    memset(&probe, 0, sizeof(probe));
    probe.cpu = cpu_b;
    probe.rounds = rounds;
    cpu_set_t previous;
    sched_getaffinity(0, sizeof(previous), &previous);
    pthread_t echo;
    if (pthread_create(&echo, NULL, bench_probe_echo, &probe) != 0) return 0;
    int pinned = CShmBench_pin(cpu_a) == 0;
    if (!pinned) __atomic_store_n(&probe.pinned, -1, __ATOMIC_RELEASE);
    uint64_t *samples = (uint64_t *)calloc((size_t)rounds, sizeof(uint64_t));
    for (uint64_t round = 1; pinned && samples && round <= (uint64_t)rounds; round++) {
        uint64_t start = CShmBench_monotonic_ns();
        __atomic_store_n(&probe.ping, round, __ATOMIC_RELEASE);
        while (__atomic_load_n(&probe.pong, __ATOMIC_ACQUIRE) != round) {
            if (__atomic_load_n(&probe.pinned, __ATOMIC_ACQUIRE) < 0) {
                pinned = 0;
                break;
            }
            CShmBench_pause();
        }
        samples[round - 1] = CShmBench_monotonic_ns() - start;
    }
    pthread_join(echo, NULL);
    sched_setaffinity(0, sizeof(previous), &previous);
    uint64_t median = 0;
    if (pinned && samples) {
        qsort(samples, (size_t)rounds, sizeof(uint64_t), bench_compare);
        median = samples[rounds / 2];
    }
    free(samples);
    return median;
}

int CShmBench_spawn(const char *path, char *const argv[], const int *fds, int count, pid_t *pid) {
    extern char **environ;
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    // Moved out of the way first, so that no target number overwrites a source still needed.
    // Scratch numbers above every source and every target.
    int scratch = 3 + count;
    for (int index = 0; index < count; index++)
        if (fds[index] >= scratch) scratch = fds[index] + 1;
    for (int index = 0; index < count; index++) posix_spawn_file_actions_adddup2(&actions, fds[index], scratch + index);
    for (int index = 0; index < count; index++) posix_spawn_file_actions_adddup2(&actions, scratch + index, 3 + index);
    posix_spawn_file_actions_addclosefrom_np(&actions, 3 + count);
    int rc = posix_spawn(pid, path, &actions, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&actions);
    return rc;
}

int CShmBench_cpu_allowed(int cpu) {
    uint64_t mask[16] = {0};
    if (cpu < 0 || cpu >= 1024 || syscall(SYS_sched_getaffinity, 0, sizeof(mask), mask) < 0) return 0;
    return (mask[cpu / 64] >> (cpu % 64)) & 1;
}

int CShmBench_pidfd(pid_t pid) {
    int fd = (int)syscall(SYS_pidfd_open, pid, 0);
    return fd < 0 ? -errno : fd;
}

int CShmBench_wait_exits(const int *pidfds, int count, int timeout_ms) {
    struct pollfd entries[CSHMBENCH_MAX_CONSUMERS + 1];
    if (count > CSHMBENCH_MAX_CONSUMERS + 1) return -EINVAL;
    for (int index = 0; index < count; index++) entries[index] = (struct pollfd){.fd = pidfds[index], .events = POLLIN};
    int ready = poll(entries, (nfds_t)count, timeout_ms);
    return ready < 0 ? -errno : ready;
}
