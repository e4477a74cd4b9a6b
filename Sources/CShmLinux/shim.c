// CShmLinux: everything but io_uring (see uring.c).
#ifndef _GNU_SOURCE
#error "CShmLinux must be built with _GNU_SOURCE (Package.swift defines it)"
#endif

#include "CShmLinux.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <linux/membarrier.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef F_SEAL_FUTURE_WRITE
#define F_SEAL_FUTURE_WRITE 0x0010
#endif
#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77
#endif
#ifndef SO_PEERGROUPS
#define SO_PEERGROUPS 59
#endif

const int CShmLinux_MFD_CLOEXEC = MFD_CLOEXEC;
const int CShmLinux_MFD_ALLOW_SEALING = MFD_ALLOW_SEALING;
const int CShmLinux_F_SEAL_SEAL = F_SEAL_SEAL;
const int CShmLinux_F_SEAL_SHRINK = F_SEAL_SHRINK;
const int CShmLinux_F_SEAL_GROW = F_SEAL_GROW;
const int CShmLinux_F_SEAL_WRITE = F_SEAL_WRITE;
const int CShmLinux_F_SEAL_FUTURE_WRITE = F_SEAL_FUTURE_WRITE;
const int CShmLinux_SO_PEERPIDFD = SO_PEERPIDFD;
const int CShmLinux_EFD_CLOEXEC = EFD_CLOEXEC;
const int CShmLinux_EFD_NONBLOCK = EFD_NONBLOCK;
const int CShmLinux_EFD_SEMAPHORE = EFD_SEMAPHORE;
const short CShmLinux_POLLRDHUP = POLLRDHUP;

// MARK: - memfd, seals, space

int CShmLinux_memfd_create(const char *name, unsigned int flags) { return memfd_create(name, flags); }

int CShmLinux_add_seals(int fd, int seals) { return fcntl(fd, F_ADD_SEALS, seals); }

int CShmLinux_get_seals(int fd) { return fcntl(fd, F_GET_SEALS); }

int CShmLinux_fallocate(int fd, off_t offset, off_t length) { return fallocate(fd, 0, offset, length); }

int CShmLinux_get_status_flags(int fd) { return fcntl(fd, F_GETFL); }

// MARK: - Descriptor passing

// One control buffer large enough for the most descriptors a message may carry, aligned for cmsghdr.
typedef union {
    char bytes[CMSG_SPACE(sizeof(int) * CSHMLINUX_MAX_FDS_PER_MESSAGE)];
    struct cmsghdr align;
} control_buffer;

ssize_t CShmLinux_send_with_fds(int socket, const void *payload, size_t length, const int *fds,
                                int fd_count) {
    if (fd_count < 0 || fd_count > CSHMLINUX_MAX_FDS_PER_MESSAGE) {
        errno = EINVAL;
        return -1;
    }
    struct iovec iov = {.iov_base = (void *)payload, .iov_len = length};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    control_buffer control;
    if (fd_count > 0) {
        memset(&control, 0, sizeof(control));
        msg.msg_control = control.bytes;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)fd_count);
        struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
        cmsg->cmsg_level = SOL_SOCKET;
        cmsg->cmsg_type = SCM_RIGHTS;
        cmsg->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)fd_count);
        memcpy(CMSG_DATA(cmsg), fds, sizeof(int) * (size_t)fd_count);
    }
    // MSG_NOSIGNAL: a vanished peer is EPIPE, never a SIGPIPE that kills a Swift process.
    return sendmsg(socket, &msg, MSG_NOSIGNAL);
}

int CShmLinux_receive_with_fds(int socket, void *buffer, size_t capacity, int *fds, int max_fds,
                               int flags, CShmLinux_received *out) {
    if (max_fds < 0 || max_fds > CSHMLINUX_MAX_FDS_PER_MESSAGE) {
        errno = EINVAL;
        return -1;
    }
    struct iovec iov = {.iov_base = buffer, .iov_len = capacity};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    control_buffer control;
    if (max_fds > 0) {
        msg.msg_control = control.bytes;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)max_fds);
    }
    ssize_t n = recvmsg(socket, &msg, flags | MSG_CMSG_CLOEXEC);
    if (n < 0) return -1;
    out->bytes = n;
    out->fd_count = 0;
    out->payload_truncated = (msg.msg_flags & MSG_TRUNC) != 0;
    out->descriptors_truncated = (msg.msg_flags & MSG_CTRUNC) != 0;
    for (struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg); cmsg != NULL; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
        if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS) continue;
        size_t count = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(cmsg) + i * sizeof(int), sizeof(int));
            if (out->fd_count < max_fds) {
                fds[out->fd_count++] = fd;
            } else {
                // More than asked for: CMSG_SPACE pads the control buffer to 8 bytes, so with an
                // odd max_fds the kernel may deliver one more. Never leak it.
                close(fd);
                out->descriptors_truncated = true;
            }
        }
    }
    return 0;
}

// MARK: - Credentials

int CShmLinux_peer_credentials(int socket, pid_t *pid, uid_t *uid, gid_t *gid) {
    struct ucred cred;
    socklen_t length = sizeof(cred);
    if (getsockopt(socket, SOL_SOCKET, SO_PEERCRED, &cred, &length) != 0) return -1;
    *pid = cred.pid;
    *uid = cred.uid;
    *gid = cred.gid;
    return 0;
}

int CShmLinux_peer_groups(int socket, gid_t *groups, int capacity, int *count) {
    socklen_t length = (socklen_t)(sizeof(gid_t) * (size_t)(capacity > 0 ? capacity : 0));
    int rc = getsockopt(socket, SOL_SOCKET, SO_PEERGROUPS, groups, &length);
    if (rc != 0 && errno != ERANGE) return -1;
    // On ERANGE the kernel stores the size needed in `length`.
    *count = (int)(length / sizeof(gid_t));
    return 0;
}

int CShmLinux_peer_pidfd(int socket) {
    int pidfd = -1;
    socklen_t length = sizeof(pidfd);
    if (getsockopt(socket, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &length) != 0) return -1;
    return pidfd;
}

int CShmLinux_pidfd_open(pid_t pid, unsigned int flags) { return (int)syscall(SYS_pidfd_open, pid, flags); }

int CShmLinux_pidfd_send_signal(int pidfd, int signal) {
    return (int)syscall(SYS_pidfd_send_signal, pidfd, signal, NULL, 0);
}

static volatile sig_atomic_t stop_signal_received = 0;

static void record_stop_signal(int signal) { stop_signal_received = signal; }

int CShmLinux_install_stop_signals(void) {
    struct sigaction action;
    memset(&action, 0, sizeof(action));
    action.sa_handler = record_stop_signal;
    sigemptyset(&action.sa_mask);
    if (sigaction(SIGINT, &action, NULL) != 0) return -1;
    return sigaction(SIGTERM, &action, NULL);
}

int CShmLinux_stop_signal(void) { return stop_signal_received; }

static sigset_t stop_signals(void) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    return set;
}

int CShmLinux_block_stop_signals(void) {
    sigset_t set = stop_signals();
    return pthread_sigmask(SIG_BLOCK, &set, NULL);
}

int CShmLinux_wait_stop_signal(void) {
    sigset_t set = stop_signals();
    int received = 0;
    while (sigwait(&set, &received) != 0) {
    }
    stop_signal_received = received;
    return received;
}

int CShmLinux_pipe_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC); }

int CShmLinux_accept4(int socket, int flags) { return accept4(socket, NULL, NULL, flags); }

int CShmLinux_eventfd(unsigned int initial, int flags) { return eventfd(initial, flags); }

pid_t CShmLinux_gettid(void) { return (pid_t)syscall(SYS_gettid); }

// MARK: - futex

int CShmLinux_futex_wait(uint32_t *word, uint32_t expected, const struct timespec *timeout,
                         bool private_to_process) {
    int op = FUTEX_WAIT | (private_to_process ? FUTEX_PRIVATE_FLAG : 0);
    return (int)syscall(SYS_futex, word, op, expected, timeout, NULL, 0);
}

int CShmLinux_futex_wake(uint32_t *word, int count, bool private_to_process) {
    int op = FUTEX_WAKE | (private_to_process ? FUTEX_PRIVATE_FLAG : 0);
    return (int)syscall(SYS_futex, word, op, count, NULL, NULL, 0);
}

// MARK: - The robust mutex

_Static_assert(offsetof(CShmLinux_lock_page, mutex) == 64, "the mutex starts on its own cache line");
_Static_assert(sizeof(CShmLinux_lock_page) <= 4096, "the lock page fits one page");

int CShmLinux_lock_init(CShmLinux_lock_page *page) {
    memset(page, 0, sizeof(*page));
    pthread_mutexattr_t attributes;
    int rc = pthread_mutexattr_init(&attributes);
    if (rc != 0) return rc;
    if ((rc = pthread_mutexattr_setpshared(&attributes, PTHREAD_PROCESS_SHARED)) != 0 ||
        (rc = pthread_mutexattr_setrobust(&attributes, PTHREAD_MUTEX_ROBUST)) != 0 ||
        (rc = pthread_mutexattr_settype(&attributes, PTHREAD_MUTEX_ERRORCHECK)) != 0 ||
        (rc = pthread_mutex_init(&page->mutex, &attributes)) != 0) {
        pthread_mutexattr_destroy(&attributes);
        return rc;
    }
    pthread_mutexattr_destroy(&attributes);
    page->version = CSHMLINUX_LOCK_PAGE_VERSION;
    // The magic is written last: an attacher that sees it sees an initialised mutex. (Attachers
    // receive the descriptor only after this returns, so program order suffices; the release store
    // documents the intent.)
    __atomic_store_n(&page->magic, CSHMLINUX_LOCK_PAGE_MAGIC, __ATOMIC_RELEASE);
    return 0;
}

// Turns the result of a pthread locking call into an outcome code.
static int lock_outcome(CShmLinux_lock_page *page, int rc) {
    if (rc == EOWNERDEAD) {
        // We own the mutex now. Make it consistent before anything else: unlocking it without
        // pthread_mutex_consistent() would leave it ENOTRECOVERABLE for every process, forever.
        // It fails only for a mutex that is not robust or not inconsistent, which EOWNERDEAD rules
        // out; should it fail anyway, we keep the lock rather than unlock it into ENOTRECOVERABLE.
        int consistent = pthread_mutex_consistent(&page->mutex);
        if (consistent != 0) return -consistent;
        // Remembered in the page, not in the mutex: reported to every locker until repaired.
        // Written and read under the mutex, whose acquire/release orders it.
        page->needs_repair = 1;
        // Read without the lock (RobustLock.ownerDeaths, relaxed): atomic, statistics only.
        __atomic_fetch_add(&page->owner_deaths, 1, __ATOMIC_RELAXED);
        return CSHMLINUX_LOCK_PREVIOUS_OWNER_DIED;
    }
    if (rc == EBUSY) return CSHMLINUX_LOCK_BUSY;
    if (rc != 0) return -rc;
    return page->needs_repair ? CSHMLINUX_LOCK_PREVIOUS_OWNER_DIED : CSHMLINUX_LOCK_ACQUIRED;
}

int CShmLinux_lock_lock(CShmLinux_lock_page *page) {
    return lock_outcome(page, pthread_mutex_lock(&page->mutex));
}

int CShmLinux_lock_trylock(CShmLinux_lock_page *page) {
    return lock_outcome(page, pthread_mutex_trylock(&page->mutex));
}

int CShmLinux_lock_timedlock(CShmLinux_lock_page *page, int64_t timeout_ns) {
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    if (timeout_ns < 0) timeout_ns = 0;
    deadline.tv_sec += (time_t)(timeout_ns / 1000000000);
    deadline.tv_nsec += (long)(timeout_ns % 1000000000);
    if (deadline.tv_nsec >= 1000000000) {
        deadline.tv_sec += 1;
        deadline.tv_nsec -= 1000000000;
    }
    int rc;
    do {
        rc = pthread_mutex_clocklock(&page->mutex, CLOCK_MONOTONIC, &deadline);
    } while (rc == EINTR);
    return lock_outcome(page, rc);
}

int CShmLinux_lock_unlock(CShmLinux_lock_page *page) {
    // Error-checking and robust mutexes both verify ownership: a non-owner gets EPERM, and the
    // mutex is left untouched.
    int rc = pthread_mutex_unlock(&page->mutex);
    return rc == 0 ? 0 : -rc;
}

pid_t CShmLinux_lock_owner(const CShmLinux_lock_page *page) {
    // glibc stores the owner's thread id in __data.__owner (robust mutexes: with FUTEX_OWNER_DIED
    // possibly set in the futex word, not in __owner). Relaxed: a thread reading its own tid there
    // wrote it itself; any other value only says "not me".
    return (pid_t)__atomic_load_n(&page->mutex.__data.__owner, __ATOMIC_RELAXED);
}

bool CShmLinux_lock_is_held_by_caller(const CShmLinux_lock_page *page) {
    return CShmLinux_lock_owner(page) == CShmLinux_gettid();
}

int CShmLinux_lock_mark_repaired(CShmLinux_lock_page *page) {
    if (!CShmLinux_lock_is_held_by_caller(page)) return -EPERM;
    page->needs_repair = 0;
    return 0;
}

int CShmLinux_membarrier_register_global_expedited(void) {
    return (int)syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED, 0, 0);
}

int CShmLinux_membarrier_global_expedited(void) {
    return (int)syscall(SYS_membarrier, MEMBARRIER_CMD_GLOBAL_EXPEDITED, 0, 0);
}

// MARK: - Calibration of the spin budget

#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <time.h>

typedef struct {
    uint32_t word;  // odd: the partner's turn; even: the caller's
    int rounds;
    int avoid_cpu;  // the caller's CPU: the partner runs elsewhere when it can
} wake_pair;

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

// Waits until the word is not `value` (a private futex: both threads are in this process).
static void wait_while(uint32_t *word, uint32_t value) {
    while (__atomic_load_n(word, __ATOMIC_ACQUIRE) == value)
        syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, value, NULL, NULL, 0);
}

static void *wake_partner(void *argument) {
    wake_pair *pair = argument;
    // A wake-up across CPUs is the one a sleeping consumer pays (the producer runs elsewhere):
    // keep the partner off the caller's CPU when another CPU is allowed.
    cpu_set_t allowed;
    if (pair->avoid_cpu >= 0 && sched_getaffinity(0, sizeof(allowed), &allowed) == 0 && CPU_COUNT(&allowed) > 1) {
        CPU_CLR(pair->avoid_cpu, &allowed);
        sched_setaffinity(0, sizeof(allowed), &allowed);
    }
    for (int i = 0; i < pair->rounds; i++) {
        wait_while(&pair->word, (uint32_t)(2 * i));  // wait for the caller's ping (odd)
        __atomic_store_n(&pair->word, (uint32_t)(2 * i + 2), __ATOMIC_RELEASE);
        syscall(SYS_futex, &pair->word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
    }
    return NULL;
}

static int compare_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

int64_t CShmLinux_measure_wake_ns(int rounds) {
    if (rounds < 1) rounds = 1;
    wake_pair pair = {.word = 0, .rounds = rounds, .avoid_cpu = sched_getcpu()};
    int64_t *samples = malloc(sizeof(int64_t) * (size_t)rounds);
    if (samples == NULL) return -ENOMEM;
    pthread_t thread;
    int rc = pthread_create(&thread, NULL, wake_partner, &pair);
    if (rc != 0) {
        free(samples);
        return -rc;
    }
    for (int i = 0; i < rounds; i++) {
        int64_t start = now_ns();
        __atomic_store_n(&pair.word, (uint32_t)(2 * i + 1), __ATOMIC_RELEASE);
        syscall(SYS_futex, &pair.word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
        wait_while(&pair.word, (uint32_t)(2 * i + 1));
        samples[i] = (now_ns() - start) / 2;
    }
    pthread_join(thread, NULL);
    qsort(samples, (size_t)rounds, sizeof(int64_t), compare_i64);
    int64_t median = samples[rounds / 2];
    free(samples);
    return median;
}
