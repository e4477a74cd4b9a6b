// zeromq: one ZMQ_PAIR socket pair over ipc:// (a Unix socket under /tmp named after the run;
// the path is unlinked once both sides are connected). PAIR carries both directions of a round
// trip on separate pipes. zmq_send blocks at the high-water mark (1000 messages each way, the
// default) and zmq_recv blocks while nothing has arrived; ZeroMQ's I/O thread moves the bytes.
// open: role 0 binds and waits for role 1's hello, then answers it, so that the connection is up
// (and its setup is out of the measurement) before either side says ready.
#include "peer.h"

#include <zmq.h>

typedef struct {
    const CShmBench_params *p;
    void *socket;
    uint64_t sent, received;
} zeromq_ctx;

static void *zeromq_context, *zeromq_socket;
static std::string zeromq_path;
static int zeromq_role = -1;

/// Role 0's socket file (unlinked already once role 1 has connected).
static void zeromq_cleanup(void) {
    if (zeromq_role == 0 && !zeromq_path.empty()) unlink(zeromq_path.c_str());
}

[[noreturn]] static void zeromq_fail(const CShmBench_params *p, const char *what) {
    peer_fail(p->shared, "zeromq: %s: %s", what, zmq_strerror(zmq_errno()));
}

static void zeromq_set(const CShmBench_params *p, int option, int value, const char *what) {
    if (zmq_setsockopt(zeromq_socket, option, &value, sizeof(value)) != 0) zeromq_fail(p, what);
}

static int zeromq_open(zeromq_ctx *context, const CShmBench_params *p) {
    peer_check_scenario(p, "zeromq");
    context->p = p;
    zeromq_path = "/tmp/" + peer_name(p, "-zeromq.ipc");
    std::string endpoint = "ipc://" + zeromq_path;
    zeromq_context = zmq_ctx_new();
    if (!zeromq_context) zeromq_fail(p, "zmq_ctx_new");
    zeromq_socket = zmq_socket(zeromq_context, ZMQ_PAIR);
    if (!zeromq_socket) zeromq_fail(p, "zmq_socket(ZMQ_PAIR)");
    context->socket = zeromq_socket;
    // At the end, close waits up to 10 s for queued messages (the stop mark) to leave.
    zeromq_set(p, ZMQ_LINGER, 10000, "zmq_setsockopt(ZMQ_LINGER)");
    // The handshake's waits are bounded; the measured receives are not (set back below).
    zeromq_set(p, ZMQ_RCVTIMEO, (int)(peer_open_timeout_ns / 1000000), "zmq_setsockopt(ZMQ_RCVTIMEO)");
    uint8_t word[8] = {0};
    if (p->role == 0) {
        if (zmq_bind(zeromq_socket, endpoint.c_str()) != 0) zeromq_fail(p, ("zmq_bind " + endpoint).c_str());
        if (zmq_recv(zeromq_socket, word, sizeof(word), 0) != (int)sizeof(word))
            zeromq_fail(p, zmq_errno() == EAGAIN ? "no hello from role 1 within 10 s (zmq_recv)" : "hello from role 1 (zmq_recv)");
        unlink(zeromq_path.c_str());  // connected: a killed run leaves no socket file behind
        if (zmq_send(zeromq_socket, word, sizeof(word), 0) != (int)sizeof(word)) zeromq_fail(p, "answering the hello (zmq_send)");
    } else {
        // connect does not need the listener yet: ZeroMQ retries in the background, every 10 ms.
        zeromq_set(p, ZMQ_RECONNECT_IVL, 10, "zmq_setsockopt(ZMQ_RECONNECT_IVL)");
        if (zmq_connect(zeromq_socket, endpoint.c_str()) != 0) zeromq_fail(p, ("zmq_connect " + endpoint).c_str());
        if (zmq_send(zeromq_socket, word, sizeof(word), 0) != (int)sizeof(word)) zeromq_fail(p, "hello (zmq_send)");
        if (zmq_recv(zeromq_socket, word, sizeof(word), 0) != (int)sizeof(word))
            zeromq_fail(p, ((zmq_errno() == EAGAIN ? "no answer from role 0 within 10 s on " : "answer from role 0 on ") + endpoint
                            + " (zmq_recv)").c_str());
    }
    zeromq_set(p, ZMQ_RCVTIMEO, -1, "zmq_setsockopt(ZMQ_RCVTIMEO)");
    return 0;
}

static inline void zeromq_send(zeromq_ctx *context, const uint8_t *message, uint32_t size) {
    context->sent++;
    for (;;) {
        int done = zmq_send(context->socket, message, size, 0);
        if (done == (int)size) return;
        if (done < 0 && zmq_errno() == EINTR) continue;
        peer_fail(context->p->shared, "zeromq: zmq_send of message %llu: %s", (unsigned long long)context->sent,
                  done < 0 ? zmq_strerror(zmq_errno()) : "short send");
    }
}

static inline void zeromq_flush(zeromq_ctx *context) { (void)context; }

static inline void zeromq_recv(zeromq_ctx *context, uint8_t *message, uint32_t size) {
    context->received++;
    for (;;) {
        int done = zmq_recv(context->socket, message, size, 0);
        if (done == (int)size) return;
        if (done < 0 && zmq_errno() == EINTR) continue;
        if (done < 0)
            peer_fail(context->p->shared, "zeromq: zmq_recv of message %llu: %s", (unsigned long long)context->received,
                      zmq_strerror(zmq_errno()));
        peer_fail(context->p->shared, "zeromq: message %llu has %d bytes, not %u", (unsigned long long)context->received,
                  done, size);
    }
}

#define BENCH_TRANSPORT zeromq
#include "driver.h"

int main(int argc, char **argv) {
    CShmBench_params p;
    if (CShmBench_parse(argc - 1, argv + 1, &p) != 0) return 2;
    zeromq_role = p.role;
    peer_cleanup = zeromq_cleanup;
    int status = CShmBench_run_zeromq(&p);
    if (status == 0 && zeromq_socket) {
        // Role 1 has everything once it has the stop mark, and says so; role 0 waits for that
        // before it closes: ZMQ_LINGER only keeps messages that are still in the socket's queue,
        // and what the I/O thread has already taken but not yet written (the consumer was behind)
        // would be lost with the process (seen: the last ~80 messages and the stop mark, about
        // once in 30 throughput runs).
        uint8_t word[8] = {0};
        int timeout = (int)(peer_open_timeout_ns / 1000000);
        if (p.role == 1) zmq_send(zeromq_socket, word, sizeof(word), 0);
        else if (zmq_setsockopt(zeromq_socket, ZMQ_RCVTIMEO, &timeout, sizeof(timeout)) == 0)
            zmq_recv(zeromq_socket, word, sizeof(word), 0);
    }
    if (zeromq_socket) zmq_close(zeromq_socket);  // waits (ZMQ_LINGER) for what is queued to leave
    if (zeromq_context) zmq_ctx_term(zeromq_context);
    zeromq_cleanup();
    return status;
}
