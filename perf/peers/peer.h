// What the programs of perf/peers share: the bench's contract (CShmBench.h, driver.h) and a few
// helpers for naming, failing and the open step. Each program defines its transport, includes
// driver.h and has a main that parses, runs and cleans up (README.md).
#ifndef SHMRING_PEER_H
#define SHMRING_PEER_H

#include "CShmBench.h"

#include <string>

/// How long the side that opens (role 1) retries before it gives up on role 0's objects.
static const uint64_t peer_open_timeout_ns = 10000000000ull;

/// What to undo before a failure exits (CShmBench_fail leaves with _exit, so no destructor
/// runs): the program's named objects. Set by each program's main.
static void (*peer_cleanup)(void);

/// CShmBench_fail after the program's cleanup (run once, even if it fails in turn).
[[noreturn]] __attribute__((format(printf, 2, 3))) static void peer_fail(CShmBench_shared *shared, const char *format, ...) {
    char text[448];
    va_list arguments;
    va_start(arguments, format);
    vsnprintf(text, sizeof(text), format, arguments);
    va_end(arguments);
    void (*cleanup)(void) = peer_cleanup;
    peer_cleanup = nullptr;
    if (cleanup) cleanup();
    CShmBench_fail(shared, "%s", text);
    _exit(1);  // not reached
}

/// The scenarios every peer runs (one consumer): throughput, rtt-block and latency. rtt-spin and
/// fanout are ShmRing's and the C baselines' business; a peer refuses them with a failure.
static inline void peer_check_scenario(const CShmBench_params *p, const char *system) {
    if (p->scenario != CSHMBENCH_THROUGHPUT && p->scenario != CSHMBENCH_RTT_BLOCK && p->scenario != CSHMBENCH_LATENCY)
        peer_fail(p->shared, "%s: scenario %d is not supported (throughput, rtt-block, latency)", system, p->scenario);
    if (p->consumers != 1) peer_fail(p->shared, "%s: %d consumers: only one is supported", system, p->consumers);
    if (p->role != 0 && p->role != 1) peer_fail(p->shared, "%s: role %d: only roles 0 and 1 exist", system, p->role);
}

/// The run's name with a suffix: every named object of a run derives from `name=`.
static inline std::string peer_name(const CShmBench_params *p, const char *suffix) {
    return std::string(p->name) + suffix;
}

/// Role 1's retry loop while role 0's objects are not there yet: sleeps `step_us` and says
/// whether there is time left.
static inline bool peer_retry(uint64_t started_ns, unsigned step_us = 5000) {
    if (CShmBench_monotonic_ns() - started_ns >= peer_open_timeout_ns) return false;
    usleep(step_us);
    return true;
}

#endif
