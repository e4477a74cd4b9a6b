// CShmTestSupport: what the test peer, the tests and the command's measuring tools need from C,
// and the library never does: a seccomp filter that proves a loop makes no system call, CPU
// pinning, and spawning with every other descriptor closed. Symbols carry the module prefix.
#ifndef CSHMTESTSUPPORT_H
#define CSHMTESTSUPPORT_H

#include <spawn.h>

/// Installs a seccomp filter that kills the process on any system call but `exit`,
/// `exit_group` and `write` to descriptor 1 (after PR_SET_NO_NEW_PRIVS). For tests that prove a
/// loop makes no system call. Returns 0 or -1 with errno.
int CShmTestSupport_seccomp_allow_only_exit_and_stdout(void);
/// Pins the calling thread to one CPU; returns 0 or an errno value.
int CShmTestSupport_pin_thread_to_cpu(int cpu);
/// How many CPUs this process may run on (sched_getaffinity).
int CShmTestSupport_usable_cpus(void);
/// `posix_spawn_file_actions_addclosefrom_np(actions, from)` (glibc 2.34+): the child closes every
/// descriptor from `from` up.
int CShmTestSupport_spawn_add_close_from(posix_spawn_file_actions_t *actions, int from);

/// `epoll_create1(EPOLL_CLOEXEC)` (the Glibc module does not carry <sys/epoll.h>).
int CShmTestSupport_epoll_create(void);
/// Adds `fd` to `epoll` for readability (level-triggered); 0 or -1 with errno.
int CShmTestSupport_epoll_add_readable(int epoll, int fd);
/// `epoll_wait`: stores the descriptors that are ready (at most `capacity`) in `ready`; returns
/// their count, or -1 with errno.
int CShmTestSupport_epoll_wait(int epoll, int *ready, int capacity, int timeout_ms);

#endif  // CSHMTESTSUPPORT_H
