// The plain primitives a blocking round trip is compared with (docs/wakeup.md): two processes
// pinned to CPU_A and CPU_B pass a token back and forth, and each waits for it asleep in the
// kernel, never spinning:
//   futex:   one shared 32-bit word per direction; the sender stores the round number and calls
//            FUTEX_WAKE; the receiver calls FUTEX_WAIT while the word holds the previous one
//            (shared, not private: two processes)
//   eventfd: one eventfd per direction; write(2) to send, a blocking read(2) to receive
// Usage: blocking futex|eventfd ROUNDS CPU_A CPU_B [GAP_US]
// Prints the round trip's percentiles (after 1 000 warm-up rounds) and slept_share: the share of
// waits that the kernel put to sleep (futex: FUTEX_WAIT returned 0, not EAGAIN; eventfd: the
// read found nothing waiting, checked with a poll of zero timeout first).
// With GAP_US > 0, B waits that long before each answer (so that A is surely asleep), stamps the
// answer with the time it sends it, and A measures the one-way latency of the answer from that
// stamp to the moment it returns from its wait: the wake-up of a sleeping receiver, every time.
// Printed as hop_p50_ns, hop_p99_ns, hop_p999_ns.
#include "common.h"
#include <errno.h>
#include <linux/futex.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>

typedef struct {
    uint32_t word[2];  // [0]: A -> B, [1]: B -> A
    uint64_t slept[2];
    uint64_t waits[2];
    uint64_t sent_at;  // B's stamp of its answer (GAP_US mode)
} shared_t;

static void futex_send(uint32_t *word, uint32_t value) {
    __atomic_store_n(word, value, __ATOMIC_RELEASE);
    syscall(SYS_futex, word, FUTEX_WAKE, 1, NULL, NULL, 0);
}

static void futex_receive(uint32_t *word, uint32_t value, uint64_t *slept, uint64_t *waits) {
    uint32_t seen;
    while ((seen = __atomic_load_n(word, __ATOMIC_ACQUIRE)) != value) {
        // Sleep while the word still holds what was just seen (the kernel compares).
        (*waits)++;
        if (syscall(SYS_futex, word, FUTEX_WAIT, seen, NULL, NULL, 0) == 0) (*slept)++;
    }
}

static void eventfd_send(int fd) {
    uint64_t one = 1;
    if (write(fd, &one, 8) != 8) perror("write");
}

static void eventfd_receive(int fd, uint64_t *slept, uint64_t *waits) {
    struct pollfd entry = {.fd = fd, .events = POLLIN};
    (*waits)++;
    if (poll(&entry, 1, 0) == 0) (*slept)++;
    uint64_t value;
    while (read(fd, &value, 8) != 8) {
        if (errno != EINTR) {
            perror("read");
            exit(1);
        }
    }
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s futex|eventfd ROUNDS CPU_A CPU_B\n", argv[0]);
        return 2;
    }
    int futex = strcmp(argv[1], "futex") == 0;
    uint64_t rounds = strtoull(argv[2], 0, 10), warm = 1000;
    int cpu_a = atoi(argv[3]), cpu_b = atoi(argv[4]);
    unsigned gap = argc > 5 ? (unsigned)atoi(argv[5]) : 0;
    shared_t *shared = shared_memory(sizeof(shared_t));
    int to_b = eventfd(0, EFD_CLOEXEC), to_a = eventfd(0, EFD_CLOEXEC);
    pid_t child = fork();
    if (child == 0) {
        pin(cpu_b);
        for (uint64_t i = 1; i <= warm + rounds; i++) {
            if (futex) {
                futex_receive(&shared->word[0], (uint32_t)i, &shared->slept[1], &shared->waits[1]);
            } else {
                eventfd_receive(to_b, &shared->slept[1], &shared->waits[1]);
            }
            if (gap) {
                usleep(gap);
                __atomic_store_n(&shared->sent_at, now_ns(), __ATOMIC_RELAXED);
            }
            if (futex) {
                futex_send(&shared->word[1], (uint32_t)i);
            } else {
                eventfd_send(to_a);
            }
        }
        _exit(0);
    }
    pin(cpu_a);
    uint64_t *samples = malloc(rounds * sizeof(uint64_t));
    for (uint64_t i = 1; i <= warm + rounds; i++) {
        if (i == warm + 1) shared->slept[0] = shared->waits[0] = 0;
        uint64_t start = now_ns();
        if (futex) {
            futex_send(&shared->word[0], (uint32_t)i);
            futex_receive(&shared->word[1], (uint32_t)i, &shared->slept[0], &shared->waits[0]);
        } else {
            eventfd_send(to_b);
            eventfd_receive(to_a, &shared->slept[0], &shared->waits[0]);
        }
        uint64_t end = now_ns();
        if (gap) start = __atomic_load_n(&shared->sent_at, __ATOMIC_RELAXED);  // the answer's hop only
        if (i > warm) samples[i - warm - 1] = end - start;
    }
    waitpid(child, 0, 0);
    qsort(samples, rounds, sizeof(uint64_t), compare_u64);
    printf(gap ? "%s hop_p50_ns=%llu hop_p99_ns=%llu hop_p999_ns=%llu samples=%llu slept_share=%.3f\n"
               : "%s rtt_p50_ns=%llu rtt_p99_ns=%llu rtt_p999_ns=%llu samples=%llu slept_share=%.3f\n",
           argv[1],
           (unsigned long long)samples[rounds / 2], (unsigned long long)samples[rounds * 99 / 100],
           (unsigned long long)samples[rounds * 999 / 1000], (unsigned long long)rounds,
           (double)shared->slept[0] / (double)(rounds ? rounds : 1));
    return 0;
}
