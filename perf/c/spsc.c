// A plain SPSC ring of 64-byte slots that publishes its head index after every message (and the
// consumer its tail after every message), busy-spin. Usage: spsc MESSAGES CPU_A CPU_B
#include "common.h"

#define SLOTS 16384  // 1 MiB of 64-byte slots

int main(int argc, char **argv) {
    uint64_t messages = argc > 1 ? strtoull(argv[1], 0, 10) : 10000000;
    int cpu_a = argc > 2 ? atoi(argv[2]) : 0, cpu_b = argc > 3 ? atoi(argv[3]) : 1;
    char *memory = shared_memory(256 + (size_t)SLOTS * 64);
    uint64_t *head = (uint64_t *)memory, *tail = (uint64_t *)(memory + 128);
    char *slots = memory + 256;
    pid_t child = fork();
    if (child == 0) {
        pin(cpu_b);
        uint64_t position = 0, sum = 0, cached_head = 0;
        uint64_t start = 0;
        while (position < messages) {
            if (position == cached_head) {
                while ((cached_head = __atomic_load_n(head, __ATOMIC_ACQUIRE)) == position) cpu_relax();
            }
            if (position == 0) start = now_ns();
            char *slot = slots + (position % SLOTS) * 64;
            uint64_t value;
            memcpy(&value, slot, 8);
            sum += value;
            position++;
            __atomic_store_n(tail, position, __ATOMIC_RELEASE);
        }
        uint64_t elapsed = now_ns() - start;
        printf("spsc64 messages=%llu msgs_per_s=%.0f checksum=%llu\n", (unsigned long long)messages,
               messages / (elapsed / 1e9), (unsigned long long)sum);
        fflush(stdout);
        _exit(0);
    }
    pin(cpu_a);
    char payload[64];
    memset(payload, 7, sizeof(payload));
    uint64_t cached_tail = 0;
    for (uint64_t position = 0; position < messages; position++) {
        if (position - cached_tail >= SLOTS) {
            while (position - (cached_tail = __atomic_load_n(tail, __ATOMIC_ACQUIRE)) >= SLOTS) cpu_relax();
        }
        memcpy(payload, &position, 8);
        memcpy(slots + (position % SLOTS) * 64, payload, 64);
        __atomic_store_n(head, position + 1, __ATOMIC_RELEASE);
    }
    waitpid(child, 0, 0);
    return 0;
}
