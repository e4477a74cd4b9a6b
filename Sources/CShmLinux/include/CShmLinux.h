// CShmLinux: the Linux system interfaces ShmRing needs that Swift cannot call directly (variadic
// fcntl, macros, cmsg arithmetic, raw syscalls without glibc wrappers) or that must stay in C
// (the robust mutex, liburing).
//
// Conventions (after swift-nio's CNIOLinux): every symbol carries the `CShmLinux_` prefix; a
// function returns -1 (or NULL) and leaves `errno` set on failure unless its comment says
// otherwise; Swift wrappers read `errno` immediately after the call.
#ifndef CSHMLINUX_H
#define CSHMLINUX_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

// MARK: - Constants Swift cannot import (macros with casts, or missing from Debian 12's headers)

extern const int CShmLinux_MFD_CLOEXEC;
extern const int CShmLinux_MFD_ALLOW_SEALING;
extern const int CShmLinux_F_SEAL_SEAL;
extern const int CShmLinux_F_SEAL_SHRINK;
extern const int CShmLinux_F_SEAL_GROW;
extern const int CShmLinux_F_SEAL_WRITE;
extern const int CShmLinux_F_SEAL_FUTURE_WRITE;
extern const int CShmLinux_EFD_CLOEXEC;
extern const int CShmLinux_EFD_NONBLOCK;
extern const int CShmLinux_EFD_SEMAPHORE;
extern const short CShmLinux_POLLRDHUP;
/// `SO_PEERPIDFD` is 77 on every architecture; glibc 2.36's headers lack it.
extern const int CShmLinux_SO_PEERPIDFD;

// MARK: - memfd, seals, space

/// `memfd_create(name, flags)`.
int CShmLinux_memfd_create(const char *name, unsigned int flags);
/// `fcntl(fd, F_ADD_SEALS, seals)`.
int CShmLinux_add_seals(int fd, int seals);
/// `fcntl(fd, F_GET_SEALS)`: the current seals, or -1.
int CShmLinux_get_seals(int fd);
/// `fallocate(fd, 0, offset, length)`: reserves the pages now, so a later store cannot SIGBUS.
int CShmLinux_fallocate(int fd, off_t offset, off_t length);
/// `fcntl(fd, F_GETFL)`.
int CShmLinux_get_status_flags(int fd);

// MARK: - Descriptor passing (SCM_RIGHTS)

/// The most descriptors one SCM_RIGHTS message may carry (the kernel's SCM_MAX_FD).
#define CSHMLINUX_MAX_FDS_PER_MESSAGE 253

/// Sends `length` payload bytes and `fd_count` descriptors in one message with `MSG_NOSIGNAL`.
/// Returns the bytes sent or -1. `fd_count` may be 0; at most CSHMLINUX_MAX_FDS_PER_MESSAGE.
ssize_t CShmLinux_send_with_fds(int socket, const void *payload, size_t length, const int *fds,
                                int fd_count);

/// What `CShmLinux_receive_with_fds` received.
typedef struct {
    /// Payload bytes received (0 on an orderly hang-up of a stream peer).
    ssize_t bytes;
    /// Descriptors received, stored into the caller's array (with `MSG_CMSG_CLOEXEC`).
    int fd_count;
    /// The payload did not fit the buffer (`MSG_TRUNC`).
    bool payload_truncated;
    /// Descriptors were discarded by the kernel: the control buffer was too small for
    /// `max_fds`, or the receiver hit its descriptor limit (`MSG_CTRUNC`).
    bool descriptors_truncated;
} CShmLinux_received;

/// Receives one message and up to `max_fds` descriptors (`MSG_CMSG_CLOEXEC`). `flags` is passed to
/// `recvmsg` (for example `MSG_DONTWAIT`). Returns 0 and fills `out`, or -1 with `errno`. The
/// caller owns every descriptor in `fds[0..<out->fd_count]`, truncated or not.
int CShmLinux_receive_with_fds(int socket, void *buffer, size_t capacity, int *fds, int max_fds,
                               int flags, CShmLinux_received *out);

// MARK: - Credentials

/// `SO_PEERCRED` of a connected Unix socket.
int CShmLinux_peer_credentials(int socket, pid_t *pid, uid_t *uid, gid_t *gid);
/// `SO_PEERGROUPS`: writes up to `capacity` supplementary groups and stores how many the peer has
/// in `*count` (which may exceed `capacity`; then call again with a larger array).
int CShmLinux_peer_groups(int socket, gid_t *groups, int capacity, int *count);
/// `SO_PEERPIDFD`: a pidfd of the peer (close-on-exec), or -1.
int CShmLinux_peer_pidfd(int socket);
/// `pidfd_open(pid, flags)`.
int CShmLinux_pidfd_open(pid_t pid, unsigned int flags);
/// `pidfd_send_signal(pidfd, signal, NULL, 0)`.
int CShmLinux_pidfd_send_signal(int pidfd, int signal);
/// Installs handlers for SIGINT and SIGTERM that only set a flag (async-signal-safe), without
/// SA_RESTART, so that a blocking call returns EINTR. Returns 0 or -1 with errno.
int CShmLinux_install_stop_signals(void);
/// Whether SIGINT or SIGTERM arrived since `CShmLinux_install_stop_signals`: the signal number,
/// or 0.
int CShmLinux_stop_signal(void);
/// Blocks SIGINT and SIGTERM in the calling thread (threads started afterwards inherit it), so
/// that `CShmLinux_wait_stop_signal` can take them without a race.
int CShmLinux_block_stop_signals(void);
/// Waits for SIGINT or SIGTERM (blocked first with `CShmLinux_block_stop_signals`); returns it.
int CShmLinux_wait_stop_signal(void);
/// `pipe2(fds, O_CLOEXEC)`.
int CShmLinux_pipe_cloexec(int fds[2]);
/// `accept4(socket, NULL, NULL, flags)`.
int CShmLinux_accept4(int socket, int flags);
/// `eventfd(initial, flags)`.
int CShmLinux_eventfd(unsigned int initial, int flags);
/// `gettid()`.
pid_t CShmLinux_gettid(void);

// MARK: - futex

/// `FUTEX_WAIT` on a 32-bit word, shared between processes unless `private_to_process`.
/// `timeout` is relative (NULL waits forever). Returns 0 when woken, -1 with `errno` EAGAIN (the
/// word did not hold `expected`), ETIMEDOUT or EINTR.
int CShmLinux_futex_wait(uint32_t *word, uint32_t expected, const struct timespec *timeout,
                         bool private_to_process);
/// `FUTEX_WAKE`: wakes up to `count` waiters; returns how many were woken, or -1.
int CShmLinux_futex_wake(uint32_t *word, int count, bool private_to_process);

// MARK: - membarrier (the wake-up path's asymmetric fence)

/// `membarrier(MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED)`: this process's threads take part in
/// expedited global barriers (a side that never fences on its fast path registers once). Returns
/// 0, or -1 with `errno` (ENOSYS, EINVAL, EPERM under seccomp).
int CShmLinux_membarrier_register_global_expedited(void);
/// `membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED)`: returns once every running thread of every
/// registered process has passed a full memory barrier (and the caller has). 0, or -1 with `errno`.
int CShmLinux_membarrier_global_expedited(void);

/// What one wake-up costs here, now: a thread is started on another CPU than the caller's (when
/// another is allowed: a sleeping consumer is woken from another CPU) and the two pass a private
/// futex word back and forth `rounds` times; returns the median one-way time (half a round trip)
/// in nanoseconds, or a negative errno value. Used once per process to calibrate the spin budget
/// before sleeping.
int64_t CShmLinux_measure_wake_ns(int rounds);

// MARK: - The robust process-shared mutex

#define CSHMLINUX_LOCK_PAGE_MAGIC 0x4b434f4c474e5253ULL  // "SRNGLOCK"
#define CSHMLINUX_LOCK_PAGE_VERSION 1u

/// The lock's memfd page. The mutex is robust (the kernel releases it when its owner dies and the
/// next locker gets EOWNERDEAD), process-shared and error-checking (unlock by a non-owner is EPERM,
/// relocking is EDEADLK, never undefined behaviour). `needs_repair` is set when an owner died and
/// cleared by `CShmLinux_lock_mark_repaired`: until then every locker is told.
typedef struct {
    uint64_t magic;
    uint32_t version;
    uint32_t needs_repair;
    /// How many times an owner died holding the lock (for diagnostics).
    uint64_t owner_deaths;
    uint64_t reserved[5];
    pthread_mutex_t mutex;
} CShmLinux_lock_page;

/// Initialises the page (magic, version, the mutex attributes). Returns 0 or an errno value.
int CShmLinux_lock_init(CShmLinux_lock_page *page);
/// Outcome codes of the locking functions (>= 0); failures are negative errno values.
#define CSHMLINUX_LOCK_ACQUIRED 0
#define CSHMLINUX_LOCK_PREVIOUS_OWNER_DIED 1
#define CSHMLINUX_LOCK_BUSY 2
/// Locks. EOWNERDEAD is handled here: the mutex is made consistent at once (otherwise unlocking
/// would make it unusable forever), `needs_repair` is set, and PREVIOUS_OWNER_DIED is returned to
/// this and every later locker until the data is marked repaired.
int CShmLinux_lock_lock(CShmLinux_lock_page *page);
/// As `CShmLinux_lock_lock`, but returns BUSY instead of waiting.
int CShmLinux_lock_trylock(CShmLinux_lock_page *page);
/// As `CShmLinux_lock_lock`, but returns -ETIMEDOUT after `timeout_ns` on CLOCK_MONOTONIC.
int CShmLinux_lock_timedlock(CShmLinux_lock_page *page, int64_t timeout_ns);
/// Unlocks; -EPERM when the caller's thread does not hold the lock.
int CShmLinux_lock_unlock(CShmLinux_lock_page *page);
/// Clears `needs_repair`; -EPERM when the caller's thread does not hold the lock.
int CShmLinux_lock_mark_repaired(CShmLinux_lock_page *page);
/// The thread id glibc records as the mutex's owner (0 when free).
pid_t CShmLinux_lock_owner(const CShmLinux_lock_page *page);
/// Whether the calling thread holds the mutex (its owner field names this thread).
bool CShmLinux_lock_is_held_by_caller(const CShmLinux_lock_page *page);

// MARK: - io_uring (opaque: <liburing.h> stays inside uring.c)

typedef struct CShmLinux_uring CShmLinux_uring;

/// One completion.
typedef struct {
    uint64_t user_data;
    int32_t result;
    uint32_t flags;
} CShmLinux_completion;

/// Creates a ring with `entries` submission slots; NULL with `*error` set to an errno value.
CShmLinux_uring *CShmLinux_uring_create(unsigned int entries, int *error);
void CShmLinux_uring_destroy(CShmLinux_uring *ring);
/// `io_uring_register_eventfd`: the eventfd becomes readable whenever a completion is posted.
int CShmLinux_uring_register_eventfd(CShmLinux_uring *ring, int eventfd);
/// Queues `IORING_OP_FUTEX_WAIT` (opcode 51, kernel 6.7+; liburing 2.3 has no helper) on a shared
/// 32-bit word: completes when woken (result 0) or at once with -EAGAIN when `*word != expected`.
int CShmLinux_uring_prep_futex_wait(CShmLinux_uring *ring, uint32_t *word, uint32_t expected,
                                    uint64_t user_data);
/// Queues a one-shot poll of `fd` for `events` (POLLIN, POLLRDHUP, ...).
int CShmLinux_uring_prep_poll(CShmLinux_uring *ring, int fd, uint32_t events, uint64_t user_data);
/// Queues a relative timeout (completes with -ETIME after `nanoseconds`) and submits everything
/// queued so far, because the kernel reads the timeout when it is submitted.
int CShmLinux_uring_prep_timeout(CShmLinux_uring *ring, int64_t nanoseconds, uint64_t user_data);
/// Queues a cancellation of the request tagged `target`.
int CShmLinux_uring_prep_cancel(CShmLinux_uring *ring, uint64_t target, uint64_t user_data);
/// Submits what was queued; returns the number submitted or a negative errno value.
int CShmLinux_uring_submit(CShmLinux_uring *ring);
/// Waits up to `timeout_ns` (negative: forever) for one completion and consumes it. Returns 0,
/// -ETIME on timeout, or another negative errno value.
int CShmLinux_uring_wait(CShmLinux_uring *ring, int64_t timeout_ns, CShmLinux_completion *out);
/// Submits what was queued and waits up to `timeout_ns` for one completion, in one system call
/// (`io_uring_submit_and_wait_timeout`), and consumes it. Returns 0, -ETIME, or a negative errno.
int CShmLinux_uring_submit_and_wait(CShmLinux_uring *ring, int64_t timeout_ns, CShmLinux_completion *out);
/// Consumes one completion if one is ready: 1 if so, 0 if none.
int CShmLinux_uring_peek(CShmLinux_uring *ring, CShmLinux_completion *out);
/// The kernel's IORING_OP_FUTEX_WAIT is usable here: 1, 0 (not supported), or a negative errno.
int CShmLinux_uring_probe_futex_wait(void);

#endif  // CSHMLINUX_H
