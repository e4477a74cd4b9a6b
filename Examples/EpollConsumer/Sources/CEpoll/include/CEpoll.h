// The three epoll calls the example needs, with plain int arguments.
#ifndef CEPOLL_H
#define CEPOLL_H

/// `epoll_create1(EPOLL_CLOEXEC)`.
int CEpoll_create(void);
/// Watches `fd` for readability (level-triggered); 0, or -1 with errno.
int CEpoll_add(int epoll, int fd);
/// Waits up to `timeout_ms`; stores the ready descriptors (at most `capacity`, at most 16) in
/// `ready` and returns their count, or -1 with errno.
int CEpoll_wait(int epoll, int *ready, int capacity, int timeout_ms);

#endif
