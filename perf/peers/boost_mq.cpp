// boost-mq: Boost.Interprocess message_queue, one queue per direction (1024 messages of `size`
// bytes). send() blocks while the queue is full and receive() while it is empty, on the
// process-shared pthread mutex and condition variables that Boost keeps in the queue's shared
// memory (/dev/shm/<name>-...).
#include "peer.h"

#include <boost/interprocess/ipc/message_queue.hpp>

#include <memory>

namespace bip = boost::interprocess;

static const unsigned boost_mq_capacity = 1024;

typedef struct {
    const CShmBench_params *p;
    bip::message_queue *transmit, *receive;
    uint64_t sent, received;
} boost_mq_ctx;

static std::unique_ptr<bip::message_queue> boost_mq_queues[2];
static std::string boost_mq_names[2];
static int boost_mq_role = -1;

/// Role 0 made the queues and removes their names (role 1 removes them too, once it has them
/// open; a name that is gone already is fine). Mapped queues live on until both have left.
static void boost_mq_cleanup(void) {
    if (boost_mq_role != 0) return;
    for (auto &name : boost_mq_names)
        if (!name.empty()) bip::message_queue::remove(name.c_str());
}

static int boost_mq_open(boost_mq_ctx *context, const CShmBench_params *p) {
    peer_check_scenario(p, "boost-mq");
    context->p = p;
    int count = CShmBench_round_trip(p) ? 2 : 1;  // queue 0 carries role 0 -> role 1, queue 1 the echo
    for (int index = 0; index < count; index++) {
        boost_mq_names[index] = peer_name(p, index == 0 ? "-boost-mq-0to1" : "-boost-mq-1to0");
        const char *name = boost_mq_names[index].c_str();
        if (p->role == 0) {
            bip::message_queue::remove(name);
            try {
                boost_mq_queues[index].reset(new bip::message_queue(bip::create_only, name, boost_mq_capacity, p->size));
            } catch (const bip::interprocess_exception &error) {
                peer_fail(p->shared, "boost-mq: create %s: %s", name, error.what());
            }
        } else {
            uint64_t started = CShmBench_monotonic_ns();
            for (;;) {
                try {
                    boost_mq_queues[index].reset(new bip::message_queue(bip::open_only, name));
                    break;
                } catch (const bip::interprocess_exception &error) {
                    if (error.get_error_code() != bip::not_found_error || !peer_retry(started))
                        peer_fail(p->shared, "boost-mq: open %s: %s", name, error.what());
                }
            }
            if (boost_mq_queues[index]->get_max_msg_size() != p->size)
                peer_fail(p->shared, "boost-mq: %s holds messages of %zu bytes, not %u", name,
                          (size_t)boost_mq_queues[index]->get_max_msg_size(), p->size);
            // Both sides have it mapped: the name can go, so that a killed run leaves nothing behind.
            bip::message_queue::remove(name);
        }
    }
    bip::message_queue *forward = boost_mq_queues[0].get(), *backward = boost_mq_queues[count - 1].get();
    context->transmit = p->role == 0 ? forward : backward;
    context->receive = p->role == 0 ? backward : forward;
    return 0;
}

static inline void boost_mq_send(boost_mq_ctx *context, const uint8_t *message, uint32_t size) {
    try {
        context->transmit->send(message, size, 0);
    } catch (const bip::interprocess_exception &error) {
        peer_fail(context->p->shared, "boost-mq: send of message %llu: %s", (unsigned long long)context->sent + 1, error.what());
    }
    context->sent++;
}

static inline void boost_mq_flush(boost_mq_ctx *context) { (void)context; }

static inline void boost_mq_recv(boost_mq_ctx *context, uint8_t *message, uint32_t size) {
    bip::message_queue::size_type length = 0;
    unsigned int priority = 0;
    try {
        context->receive->receive(message, size, length, priority);
    } catch (const bip::interprocess_exception &error) {
        peer_fail(context->p->shared, "boost-mq: receive of message %llu: %s", (unsigned long long)context->received + 1,
                  error.what());
    }
    if (length != size)
        peer_fail(context->p->shared, "boost-mq: message %llu has %zu bytes, not %u", (unsigned long long)context->received + 1,
                  (size_t)length, size);
    context->received++;
}

#define BENCH_TRANSPORT boost_mq
#include "driver.h"

int main(int argc, char **argv) {
    CShmBench_params p;
    if (CShmBench_parse(argc - 1, argv + 1, &p) != 0) return 2;
    boost_mq_role = p.role;
    peer_cleanup = boost_mq_cleanup;
    int status = CShmBench_run_boost_mq(&p);
    for (auto &queue : boost_mq_queues) queue.reset();
    boost_mq_cleanup();
    return status;
}
