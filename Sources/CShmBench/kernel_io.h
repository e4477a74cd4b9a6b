// Whole writes and buffered reads for the baselines that go through the kernel (pipe, unix-socket).
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

/// Exactly `count` bytes (an eventfd's 8).
static inline void bench_read_all(const CShmBench_params *p, int fd, uint8_t *bytes, size_t count) {
    while (count > 0) {
        ssize_t done = read(fd, bytes, count);
        if (done < 0 && errno == EINTR) continue;
        if (done <= 0) CShmBench_fail(p->shared, "read on descriptor %d: %s", fd, done == 0 ? "end of file" : strerror(errno));
        bytes += done;
        count -= (size_t)done;
    }
}

/// A buffered reader of a byte stream, as a careful program reads a pipe or a socket: each
/// read(2) takes as much as is there (up to 64 KiB), and messages are handed out of the buffer.
typedef struct {
    int fd;
    size_t start, end;
    uint8_t buffer[65536];
} bench_reader;

static inline void bench_reader_open(bench_reader *reader, int fd) {
    reader->fd = fd;
    reader->start = reader->end = 0;
}

/// The next `count` bytes of the stream, waiting (in read(2)) until they are there.
static inline void bench_read_message(const CShmBench_params *p, bench_reader *reader, uint8_t *bytes, size_t count) {
    while (reader->end - reader->start < count) {
        if (reader->start > 0) {  // what is left of a message moves to the front
            memmove(reader->buffer, reader->buffer + reader->start, reader->end - reader->start);
            reader->end -= reader->start;
            reader->start = 0;
        }
        ssize_t done = read(reader->fd, reader->buffer + reader->end, sizeof(reader->buffer) - reader->end);
        if (done < 0 && errno == EINTR) continue;
        if (done <= 0)
            CShmBench_fail(p->shared, "read on descriptor %d: %s", reader->fd, done == 0 ? "end of file" : strerror(errno));
        reader->end += (size_t)done;
    }
    CShmBench_copy(bytes, reader->buffer + reader->start, (uint32_t)count);
    reader->start += count;
}
#endif
