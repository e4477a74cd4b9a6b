// The round-trip floor: one cache line per direction, a counter in each, busy-spin.
// Usage: pingpong ROUNDS CPU_A CPU_B
#include "common.h"

int main(int argc, char **argv) {
    size_t rounds = argc > 1 ? strtoull(argv[1], 0, 10) : 1000000;
    int cpu_a = argc > 2 ? atoi(argv[2]) : 0, cpu_b = argc > 3 ? atoi(argv[3]) : 1;
    char *memory = shared_memory(4096);
    uint64_t *ping = (uint64_t *)memory, *pong = (uint64_t *)(memory + 128);
    pid_t child = fork();
    if (child == 0) {
        pin(cpu_b);
        for (uint64_t i = 1; i <= rounds; i++) {
            while (__atomic_load_n(ping, __ATOMIC_ACQUIRE) != i) cpu_relax();
            __atomic_store_n(pong, i, __ATOMIC_RELEASE);
        }
        fflush(stdout);
        _exit(0);
    }
    pin(cpu_a);
    uint64_t *samples = malloc(rounds * sizeof(uint64_t));
    for (uint64_t i = 1; i <= rounds; i++) {
        uint64_t start = now_ns();
        __atomic_store_n(ping, i, __ATOMIC_RELEASE);
        while (__atomic_load_n(pong, __ATOMIC_ACQUIRE) != i) cpu_relax();
        samples[i - 1] = now_ns() - start;
    }
    waitpid(child, 0, 0);
    print_percentiles("pingpong", samples, rounds);
    return 0;
}
