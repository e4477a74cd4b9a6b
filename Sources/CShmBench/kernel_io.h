// Whole reads and writes for the baselines that go through the kernel (pipe, unix-socket).
#ifndef CSHMBENCH_KERNEL_IO_H
#define CSHMBENCH_KERNEL_IO_H
#include "CShmBench.h"

static inline void bench_write_all(const CShmBench_params *p, int fd, const uint8_t *bytes, size_t count) {
    while (count > 0) {
        ssize_t done = write(fd, bytes, count);
        if (done < 0 && errno == EINTR) continue;
        if (done <= 0) CShmBench_fail(p->shared, "write on descriptor %d: %s", fd, strerror(errno));
        bytes += done;
        count -= (size_t)done;
    }
}

static inline void bench_read_all(const CShmBench_params *p, int fd, uint8_t *bytes, size_t count) {
    while (count > 0) {
        ssize_t done = read(fd, bytes, count);
        if (done < 0 && errno == EINTR) continue;
        if (done <= 0) CShmBench_fail(p->shared, "read on descriptor %d: %s", fd, done == 0 ? "end of file" : strerror(errno));
        bytes += done;
        count -= (size_t)done;
    }
}
#endif
