// The opaque io_uring wrapper. <liburing.h> is included here and nowhere Swift can see: it defines
// feature macros and its own copies of kernel structs that clash with Glibc and SystemPackage.
#ifndef _GNU_SOURCE
#error "CShmLinux must be built with _GNU_SOURCE (Package.swift defines it)"
#endif

#include "CShmLinux.h"

#include <errno.h>
#include <liburing.h>
#include <stdlib.h>
#include <string.h>

// Kernel 6.7+ ABI, absent from liburing 2.3 (Debian 12): filled by hand below.
#define SHM_IORING_OP_FUTEX_WAIT 51
#define SHM_FUTEX2_SIZE_U32 0x02
#define SHM_FUTEX_BITSET_MATCH_ANY 0xffffffffu

struct CShmLinux_uring {
    struct io_uring ring;
    // The kernel reads a timeout's timespec when the request is submitted; it lives here until
    // then (CShmLinux_uring_prep_timeout submits at once).
    struct __kernel_timespec pending_timeout;
};

CShmLinux_uring *CShmLinux_uring_create(unsigned int entries, int *error) {
    CShmLinux_uring *wrapper = calloc(1, sizeof(*wrapper));
    if (wrapper == NULL) {
        *error = ENOMEM;
        return NULL;
    }
    int rc = io_uring_queue_init(entries, &wrapper->ring, 0);
    if (rc < 0) {
        free(wrapper);
        *error = -rc;
        return NULL;
    }
    return wrapper;
}

void CShmLinux_uring_destroy(CShmLinux_uring *ring) {
    if (ring == NULL) return;
    io_uring_queue_exit(&ring->ring);
    free(ring);
}

int CShmLinux_uring_register_eventfd(CShmLinux_uring *ring, int eventfd) {
    return io_uring_register_eventfd(&ring->ring, eventfd);
}

static struct io_uring_sqe *next_sqe(CShmLinux_uring *ring) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&ring->ring);
    if (sqe == NULL) {
        // The submission queue is full: submit what is there and try once more.
        io_uring_submit(&ring->ring);
        sqe = io_uring_get_sqe(&ring->ring);
    }
    return sqe;
}

int CShmLinux_uring_prep_futex_wait(CShmLinux_uring *ring, uint32_t *word, uint32_t expected,
                                    uint64_t user_data) {
    struct io_uring_sqe *sqe = next_sqe(ring);
    if (sqe == NULL) return -EBUSY;
    // As liburing 2.5's io_uring_prep_futex_wait: fd = futex2 flags (32-bit word, shared: no
    // FUTEX2_PRIVATE), addr = the word, off = expected value, addr3 = the wake mask, and
    // sqe->futex_flags (the rw_flags union) = 0.
    io_uring_prep_rw(SHM_IORING_OP_FUTEX_WAIT, sqe, SHM_FUTEX2_SIZE_U32, word, 0, expected);
    sqe->rw_flags = 0;
    sqe->addr3 = SHM_FUTEX_BITSET_MATCH_ANY;
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int CShmLinux_uring_prep_poll(CShmLinux_uring *ring, int fd, uint32_t events, uint64_t user_data) {
    struct io_uring_sqe *sqe = next_sqe(ring);
    if (sqe == NULL) return -EBUSY;
    io_uring_prep_poll_add(sqe, fd, events);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int CShmLinux_uring_prep_timeout(CShmLinux_uring *ring, int64_t nanoseconds, uint64_t user_data) {
    struct io_uring_sqe *sqe = next_sqe(ring);
    if (sqe == NULL) return -EBUSY;
    if (nanoseconds < 0) nanoseconds = 0;
    ring->pending_timeout.tv_sec = nanoseconds / 1000000000;
    ring->pending_timeout.tv_nsec = nanoseconds % 1000000000;
    io_uring_prep_timeout(sqe, &ring->pending_timeout, 0, 0);
    io_uring_sqe_set_data64(sqe, user_data);
    // Submit now, so that the timespec above is read before another preparation overwrites it.
    int rc = io_uring_submit(&ring->ring);
    return rc < 0 ? rc : 0;
}

int CShmLinux_uring_prep_cancel(CShmLinux_uring *ring, uint64_t target, uint64_t user_data) {
    struct io_uring_sqe *sqe = next_sqe(ring);
    if (sqe == NULL) return -EBUSY;
    io_uring_prep_cancel64(sqe, target, 0);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int CShmLinux_uring_submit(CShmLinux_uring *ring) { return io_uring_submit(&ring->ring); }

static void fill(CShmLinux_completion *out, const struct io_uring_cqe *cqe) {
    out->user_data = cqe->user_data;
    out->result = cqe->res;
    out->flags = cqe->flags;
}

int CShmLinux_uring_wait(CShmLinux_uring *ring, int64_t timeout_ns, CShmLinux_completion *out) {
    struct io_uring_cqe *cqe = NULL;
    int rc;
    if (timeout_ns < 0) {
        do {
            rc = io_uring_wait_cqe(&ring->ring, &cqe);
        } while (rc == -EINTR);
    } else {
        struct __kernel_timespec ts = {.tv_sec = timeout_ns / 1000000000, .tv_nsec = timeout_ns % 1000000000};
        do {
            rc = io_uring_wait_cqe_timeout(&ring->ring, &cqe, &ts);
        } while (rc == -EINTR);
    }
    if (rc < 0) return rc;
    fill(out, cqe);
    io_uring_cqe_seen(&ring->ring, cqe);
    return 0;
}

int CShmLinux_uring_submit_and_wait(CShmLinux_uring *ring, int64_t timeout_ns, CShmLinux_completion *out) {
    struct io_uring_cqe *cqe = NULL;
    if (timeout_ns < 0) timeout_ns = 0;
    struct __kernel_timespec ts = {.tv_sec = timeout_ns / 1000000000, .tv_nsec = timeout_ns % 1000000000};
    int rc;
    do {
        rc = io_uring_submit_and_wait_timeout(&ring->ring, &cqe, 1, &ts, NULL);
    } while (rc == -EINTR);
    if (rc < 0) return rc;
    // liburing 2.3 returns the number of requests it submitted, without a completion, when the
    // wait timed out (later versions return -ETIME): no completion after a wait is a timeout.
    if (cqe == NULL) return -ETIME;
    fill(out, cqe);
    io_uring_cqe_seen(&ring->ring, cqe);
    return 0;
}

int CShmLinux_uring_peek(CShmLinux_uring *ring, CShmLinux_completion *out) {
    struct io_uring_cqe *cqe = NULL;
    if (io_uring_peek_cqe(&ring->ring, &cqe) != 0 || cqe == NULL) return 0;
    fill(out, cqe);
    io_uring_cqe_seen(&ring->ring, cqe);
    return 1;
}

int CShmLinux_uring_probe_futex_wait(void) {
    struct io_uring_probe *probe = io_uring_get_probe();
    if (probe == NULL) return -ENOSYS;
    int supported = io_uring_opcode_supported(probe, SHM_IORING_OP_FUTEX_WAIT);
    io_uring_free_probe(probe);
    return supported ? 1 : 0;
}
