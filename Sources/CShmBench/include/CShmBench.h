// `shmring bench`'s C side: the clock (TSC), the page the bench's processes share with the
// command that spawned them, the arguments every role takes, and the C baselines (plain
// primitives and C rings) that run next to ShmRing. docs/benchmarking.md describes the method.
//
// This header is also what the programs of perf/peers include (with ../driver.h): it is valid C
// and C++, and everything a peer needs is `static inline` here.
#ifndef CSHMBENCH_H
#define CSHMBENCH_H

// No _GNU_SOURCE here: Swift imports this header with the C library's default declarations.
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CSHMBENCH_INLINE static inline __attribute__((always_inline))

/// The scenarios (docs/benchmarking.md).
enum {
    CSHMBENCH_THROUGHPUT = 0,
    CSHMBENCH_RTT_SPIN = 1,
    CSHMBENCH_RTT_BLOCK = 2,
    CSHMBENCH_FANOUT = 3,
    CSHMBENCH_LATENCY = 4,
};

/// Messages: the first word is the sequence (from 1) or one of these marks; the second is the
/// send stamp in TSC ticks (the intended send time in `latency`). Sizes run from 16 to 4096 bytes.
#define CSHMBENCH_STOP (1ull << 62)
#define CSHMBENCH_PROBE (1ull << 61)
#define CSHMBENCH_MIN_SIZE 16
#define CSHMBENCH_MAX_SIZE 4096
#define CSHMBENCH_MAX_CONSUMERS 16
#define CSHMBENCH_MAX_FDS 36  // fanout: a pipe per consumer (2 * CSHMBENCH_MAX_CONSUMERS), and a few
typedef char CShmBench_enough_descriptors[CSHMBENCH_MAX_FDS >= 2 * CSHMBENCH_MAX_CONSUMERS + 2 ? 1 : -1];

/// Where the samples start in the shared results memfd.
#define CSHMBENCH_SAMPLES_OFFSET 4096

/// The page that the spawning command and every role of one run share (a memfd, the role's
/// descriptor `shared_fd`). Start: each role adds 1 to `ready` once it is set up and spins until
/// `go` is 1. Results: written by the roles with plain stores (or atomic adds where several roles
/// add), read by the command after it has reaped them: a process's exit orders its stores before
/// the waitpid that sees it. The command reads what it finds as untrusted: a role may have died
/// half-way, and a peer program is not ours.
typedef struct CShmBench_shared {
    uint64_t ready;  // roles set up (atomic add)
    uint64_t go;     // set to 1 by the command once every role is ready
    uint64_t pad0[6];
    uint64_t acks;   // fanout: probes received, summed over the consumers (atomic add)
    uint64_t pad1[7];
    uint64_t sent;         // data messages the producer sent (fanout: in the full-speed phase)
    uint64_t received;     // data messages received, summed over the consumers
    uint64_t first_ticks;  // throughput, fanout: the measured interval
    uint64_t last_ticks;
    uint64_t errors;       // messages out of order or with a wrong echo (atomic add)
    uint64_t hops;         // rtt-*: one-way hops made (both directions, warm-up included)
    uint64_t switches;     // rtt-*: voluntary context switches of both sides over those hops
    uint64_t sample_count; // samples written, in ticks, at CSHMBENCH_SAMPLES_OFFSET
    uint64_t sample_capacity;
    uint64_t failed;       // 1 once `failure` holds a message
    char failure[448];
} CShmBench_shared;

CSHMBENCH_INLINE uint64_t *CShmBench_samples(CShmBench_shared *shared) {
    return (uint64_t *)((char *)shared + CSHMBENCH_SAMPLES_OFFSET);
}

/// What a role runs: parsed from its arguments (`key=value` words, see CShmBench_parse).
typedef struct CShmBench_params {
    int scenario;
    int role;       // 0: producer (or the side that starts a round trip); 1...: consumers
    int consumers;
    int cpu;        // pinned there; -1: not pinned
    uint32_t size;
    uint32_t batch;
    uint64_t duration_ns;
    uint64_t rate;      // latency: messages per second
    uint64_t stall_ns;  // latency: the producer sleeps this long once, halfway (a test's fault)
    double ticks_per_ns;
    int use_tsc;        // 0: ticks are CLOCK_MONOTONIC nanoseconds
    int shared_fd;
    int fds[CSHMBENCH_MAX_FDS];
    int fd_count;
    char name[64];      // a name unique to this run, for systems that name their objects
    pid_t bench_pid;    // the bench that started this role: it dies with it
    CShmBench_shared *shared;
} CShmBench_params;

/// The TSC. `lfence` keeps it from being read before earlier loads have completed.
CSHMBENCH_INLINE uint64_t CShmBench_rdtsc(void) {
#if defined(__x86_64__)
    uint32_t low, high;
    __asm__ __volatile__("lfence; rdtsc" : "=a"(low), "=d"(high) : : "memory");
    return ((uint64_t)high << 32) | low;
#else
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint64_t)now.tv_sec * 1000000000ull + (uint64_t)now.tv_nsec;
#endif
}

CSHMBENCH_INLINE uint64_t CShmBench_monotonic_ns(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint64_t)now.tv_sec * 1000000000ull + (uint64_t)now.tv_nsec;
}

/// The run's clock: TSC ticks, or CLOCK_MONOTONIC nanoseconds when the TSC cannot be trusted.
CSHMBENCH_INLINE uint64_t CShmBench_ticks(int use_tsc) {
    return use_tsc ? CShmBench_rdtsc() : CShmBench_monotonic_ns();
}

CSHMBENCH_INLINE void CShmBench_pause(void) {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#endif
}

/// memcpy with the default 64-byte message as a constant size, which the compiler copies inline.
CSHMBENCH_INLINE void CShmBench_copy(void *to, const void *from, uint32_t size) {
    if (size == 64) {
        memcpy(to, from, 64);
    } else if (size == 56) {  // the default message after its first word (line-floor)
        memcpy(to, from, 56);
    } else {
        memcpy(to, from, size);
    }
}

// The shared page's atomics. Their pairs: a role's add to `ready` (acq_rel: its set-up before
// it) with the command's acquire load of `ready`; the command's release store of `go` with each
// role's acquire load of it (the sample capacity and everything else the command wrote before);
// a fanout consumer's add to `acks` (acq_rel: the probe's receipt before it) with the producer's
// acquire load of `acks`; CShmBench_fail's release of `failed` with the command's acquire load.
CSHMBENCH_INLINE uint64_t CShmBench_load_acquire(const uint64_t *word) { return __atomic_load_n(word, __ATOMIC_ACQUIRE); }
CSHMBENCH_INLINE void CShmBench_store_release(uint64_t *word, uint64_t value) {
    __atomic_store_n(word, value, __ATOMIC_RELEASE);
}
CSHMBENCH_INLINE void CShmBench_add(uint64_t *word, uint64_t value) { __atomic_fetch_add(word, value, __ATOMIC_ACQ_REL); }

/// Whether the run is a round trip (one ring, pipe or queue per direction).
CSHMBENCH_INLINE int CShmBench_round_trip(const CShmBench_params *p) {
    return p->scenario == CSHMBENCH_RTT_SPIN || p->scenario == CSHMBENCH_RTT_BLOCK;
}

/// Whether this role takes the run's samples: the pinger of a round trip, fanout's producer (the
/// time until every consumer has a probe), latency's consumer.
CSHMBENCH_INLINE int CShmBench_samples_here(const CShmBench_params *p) {
    if (p->scenario == CSHMBENCH_LATENCY) return p->role == 1;
    return p->role == 0 && p->scenario != CSHMBENCH_THROUGHPUT;
}

/// Records a failure (the first one wins) for the command to print, and leaves with status 1.
static inline void CShmBench_fail(CShmBench_shared *shared, const char *format, ...) {
    char text[448];
    va_list arguments;
    va_start(arguments, format);
    vsnprintf(text, sizeof(text), format, arguments);
    va_end(arguments);
    uint64_t expected = 0;
    if (shared && __atomic_compare_exchange_n(&shared->failed, &expected, 2, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        memcpy(shared->failure, text, sizeof(text));
        __atomic_store_n(&shared->failed, 1, __ATOMIC_RELEASE);
    }
    fprintf(stderr, "bench role %d: %s\n", (int)getpid(), text);
    _exit(1);
}

/// `CShmBench_fail` for callers that cannot pass a format (Swift).
static inline void CShmBench_fail_text(CShmBench_shared *shared, const char *text) { CShmBench_fail(shared, "%s", text); }

/// Writes every page of the sample array before the start, so that no page fault lands in a sample.
static inline void CShmBench_prefault(CShmBench_shared *shared) {
    uint64_t *samples = CShmBench_samples(shared);
    for (uint64_t index = 0; index < shared->sample_capacity; index += 512) samples[index] = 0;
}

/// Sleeps `nanoseconds` (whole, through signals).
static inline void CShmBench_sleep_ns(uint64_t nanoseconds) {
    struct timespec rest = {(time_t)(nanoseconds / 1000000000ull), (long)(nanoseconds % 1000000000ull)};
    while (nanosleep(&rest, &rest) != 0 && errno == EINTR) {}
}

/// Pins the calling thread to `cpu` (the raw system call: no cpu_set_t, which needs _GNU_SOURCE).
CSHMBENCH_INLINE int CShmBench_pin(int cpu) {
    if (cpu < 0) return 0;
    if (cpu >= 1024) return -EINVAL;
    uint64_t mask[16] = {0};
    mask[cpu / 64] = 1ull << (cpu % 64);
    return syscall(SYS_sched_setaffinity, 0, sizeof(mask), mask) == 0 ? 0 : -errno;
}

#ifndef RUSAGE_THREAD
#define RUSAGE_THREAD 1  // Linux's, declared only with _GNU_SOURCE
#endif

/// Voluntary context switches of the calling thread so far: how often it slept in the kernel
/// (the thread's, not the process's: ShmRing's producer has a rendezvous thread).
CSHMBENCH_INLINE uint64_t CShmBench_voluntary_switches(void) {
    struct rusage usage;
    getrusage(RUSAGE_THREAD, &usage);
    return (uint64_t)usage.ru_nvcsw;
}

/// Parses a role's arguments: `scenario=N role=N consumers=N cpu=N size=N batch=N duration_ns=N
/// rate=N stall_ns=N ticks_per_ns=X use_tsc=0|1 shared_fd=N fds=N,N,... name=TEXT bench_pid=N`,
/// maps the shared page, and ties the role's life to the bench's. Returns 0, or -1 with a message
/// on stderr.
static inline int CShmBench_parse(int argc, char **argv, CShmBench_params *p) {
    memset(p, 0, sizeof(*p));
    p->cpu = -1;
    p->batch = 1;
    p->consumers = 1;
    p->shared_fd = -1;
    for (int index = 0; index < argc; index++) {
        const char *word = argv[index];
        const char *equals = strchr(word, '=');
        if (!equals) continue;
        size_t key = (size_t)(equals - word);
        const char *value = equals + 1;
#define CSHMBENCH_KEY(k) (key == strlen(k) && strncmp(word, k, key) == 0)
        if (CSHMBENCH_KEY("scenario")) p->scenario = atoi(value);
        else if (CSHMBENCH_KEY("role")) p->role = atoi(value);
        else if (CSHMBENCH_KEY("consumers")) p->consumers = atoi(value);
        else if (CSHMBENCH_KEY("cpu")) p->cpu = atoi(value);
        else if (CSHMBENCH_KEY("size")) p->size = (uint32_t)strtoul(value, 0, 10);
        else if (CSHMBENCH_KEY("batch")) p->batch = (uint32_t)strtoul(value, 0, 10);
        else if (CSHMBENCH_KEY("duration_ns")) p->duration_ns = strtoull(value, 0, 10);
        else if (CSHMBENCH_KEY("rate")) p->rate = strtoull(value, 0, 10);
        else if (CSHMBENCH_KEY("stall_ns")) p->stall_ns = strtoull(value, 0, 10);
        else if (CSHMBENCH_KEY("ticks_per_ns")) p->ticks_per_ns = strtod(value, 0);
        else if (CSHMBENCH_KEY("use_tsc")) p->use_tsc = atoi(value);
        else if (CSHMBENCH_KEY("shared_fd")) p->shared_fd = atoi(value);
        else if (CSHMBENCH_KEY("name")) snprintf(p->name, sizeof(p->name), "%s", value);
        else if (CSHMBENCH_KEY("bench_pid")) p->bench_pid = (pid_t)atoi(value);
        else if (CSHMBENCH_KEY("fds")) {
            const char *cursor = value;
            while (*cursor && p->fd_count < CSHMBENCH_MAX_FDS) {
                p->fds[p->fd_count++] = (int)strtol(cursor, (char **)&cursor, 10);
                if (*cursor == ',') cursor++;
            }
        }
#undef CSHMBENCH_KEY
    }
    if (p->size < CSHMBENCH_MIN_SIZE || p->size > CSHMBENCH_MAX_SIZE || p->batch < 1 || p->consumers < 1
        || p->consumers > CSHMBENCH_MAX_CONSUMERS || p->ticks_per_ns <= 0 || p->shared_fd < 0) {
        fprintf(stderr, "bench role: bad arguments (size, batch, consumers, ticks_per_ns or shared_fd)\n");
        return -1;
    }
    off_t bytes = lseek(p->shared_fd, 0, SEEK_END);
    void *memory = bytes > 0 ? mmap(NULL, (size_t)bytes, PROT_READ | PROT_WRITE, MAP_SHARED, p->shared_fd, 0) : MAP_FAILED;
    if (memory == MAP_FAILED) {
        fprintf(stderr, "bench role: cannot map the shared page (descriptor %d)\n", p->shared_fd);
        return -1;
    }
    p->shared = (CShmBench_shared *)memory;
    // The sample space must lie inside the page (the command sized both; this is its check).
    if ((uint64_t)bytes < CSHMBENCH_SAMPLES_OFFSET
        || p->shared->sample_capacity > ((uint64_t)bytes - CSHMBENCH_SAMPLES_OFFSET) / 8) {
        fprintf(stderr, "bench role: the shared page (%lld bytes) is too small for its %llu samples\n", (long long)bytes,
                (unsigned long long)p->shared->sample_capacity);
        return -1;
    }
    // A role dies with the bench that started it (SIGKILL when its parent goes), so that none is
    // left spinning on a CPU or blocked for ever; armed before any set-up, which can take seconds.
    if (p->bench_pid > 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
        if (getppid() != p->bench_pid) _exit(1);  // the bench went before the signal was armed
    }
    return 0;
}

/// Pins the role, says it is ready and waits for the start (60 s at most).
static inline void CShmBench_ready(const CShmBench_params *p) {
    int rc = CShmBench_pin(p->cpu);
    if (rc != 0) CShmBench_fail(p->shared, "cannot pin to CPU %d: %s", p->cpu, strerror(-rc));
    CShmBench_add(&p->shared->ready, 1);
    uint64_t give_up = CShmBench_monotonic_ns() + 60000000000ull;
    while (CShmBench_load_acquire(&p->shared->go) == 0) {
        if (CShmBench_monotonic_ns() > give_up) CShmBench_fail(p->shared, "no start within 60 s");
        usleep(50);
    }
}

// The command's side (bench.c).

/// Runs one role of a C system (c-twin, plain-ring, line-floor, pipe, unix-socket, eventfd,
/// futex); returns its exit status. Unknown system or scenario: 2.
int CShmBench_run(const char *system, const CShmBench_params *p);

/// Creates the kernel objects a C system needs for one run (pipes, a socket pair, eventfds, a
/// memfd) in the spawning command; their descriptors go to every role as `fds=`. Returns how many
/// descriptors it wrote (at most `capacity`), or -errno.
int CShmBench_prepare(const char *system, int scenario, int consumers, uint32_t size, uint32_t batch, int *fds,
                      int capacity);

/// The page a run's roles share with the command: a memfd of the header and `sample_capacity`
/// samples, mapped at `*shared` (`*bytes` long). Returns the descriptor, or -errno.
int CShmBench_shared_create(uint64_t sample_capacity, CShmBench_shared **shared, size_t *bytes);

/// TSC ticks per nanosecond, measured against CLOCK_MONOTONIC_RAW (which NTP does not slew)
/// over about `window_ns`.
double CShmBench_calibrate(uint64_t window_ns);

/// The median round trip, in ns, of one cache line between two threads pinned to `cpu_a` and
/// `cpu_b` (`rounds` round trips): tells the vCPUs' placement. 0 when pinning fails.
uint64_t CShmBench_probe_placement(int cpu_a, int cpu_b, int rounds);

/// Whether this process may run on `cpu` (its affinity mask).
int CShmBench_cpu_allowed(int cpu);

/// A pidfd for `pid` (readable once it has exited), or -errno.
int CShmBench_pidfd(pid_t pid);

/// Waits until one of `count` pidfds is readable (a role exited) or `timeout_ms` passes; returns
/// how many are readable (0: the timeout), or -errno.
int CShmBench_wait_exits(const int *pidfds, int count, int timeout_ms);

/// Spawns `path` with `argv`, giving it `fds[i]` as descriptor 3 + i and no other descriptor
/// beyond 2. Returns 0 with the child's pid, or an errno.
int CShmBench_spawn(const char *path, char *const argv[], const int *fds, int count, pid_t *pid);

#ifdef __cplusplus
}
#endif
#endif
