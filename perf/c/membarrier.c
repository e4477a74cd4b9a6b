// What the asymmetric fence costs the side about to sleep (docs/wakeup.md): the producer's
// process registers for MEMBARRIER_CMD_GLOBAL_EXPEDITED once; a consumer about to sleep calls
// it, and the kernel makes every running registered thread pass a full barrier (an IPI to its
// CPU) before the call returns.
// Usage: membarrier CALLS CPU_CALLER CPU_OTHER spin|sleep|none
//   spin:  the other process is registered and busy-spinning on CPU_OTHER (a producer at work)
//   sleep: the other process is registered and asleep (nothing to interrupt)
//   none:  no other process is registered
// Prints percentiles of one call, in ns.
#define _GNU_SOURCE
#include <linux/membarrier.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int membarrier(int command) { return (int)syscall(__NR_membarrier, command, 0, 0); }

static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof(set), &set) != 0) perror("sched_setaffinity");
}

static unsigned long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000ull + t.tv_nsec;
}

static int compare(const void *a, const void *b) {
    unsigned long long x = *(const unsigned long long *)a, y = *(const unsigned long long *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s CALLS CPU_CALLER CPU_OTHER spin|sleep|none\n", argv[0]);
        return 2;
    }
    int calls = atoi(argv[1]), cpu_caller = atoi(argv[2]), cpu_other = atoi(argv[3]);
    const char *mode = argv[4];
    pid_t other = -1;
    if (strcmp(mode, "none") != 0) {
        other = fork();
        if (other == 0) {
            pin(cpu_other);
            if (membarrier(MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED) != 0) perror("register");
            if (strcmp(mode, "spin") == 0)
                for (volatile unsigned long long i = 0;; i++) {
                }
            for (;;) pause();
        }
        usleep(200000);  // the other side has registered and runs (or sleeps)
    }
    pin(cpu_caller);
    unsigned long long *samples = malloc(sizeof(*samples) * calls);
    for (int i = 0; i < calls; i++) {
        unsigned long long start = now_ns();
        if (membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED) != 0) {
            perror("membarrier");
            return 1;
        }
        samples[i] = now_ns() - start;
    }
    qsort(samples, calls, sizeof(*samples), compare);
    printf("membarrier other=%s calls=%d p50_ns=%llu p99_ns=%llu p999_ns=%llu\n", mode, calls, samples[calls / 2],
           samples[calls * 99 / 100], samples[calls * 999 / 1000]);
    if (other > 0) {
        kill(other, SIGKILL);
        waitpid(other, 0, 0);
    }
    return 0;
}
