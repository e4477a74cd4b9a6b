#include "CEpoll.h"

#include <sys/epoll.h>

int CEpoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }

int CEpoll_add(int epoll, int fd) {
    struct epoll_event event = {.events = EPOLLIN, .data.fd = fd};
    return epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &event);
}

int CEpoll_wait(int epoll, int *ready, int capacity, int timeout_ms) {
    struct epoll_event events[16];
    if (capacity > 16) capacity = 16;
    int count = epoll_wait(epoll, events, capacity, timeout_ms);
    for (int i = 0; i < count; i++) ready[i] = events[i].data.fd;
    return count;
}
