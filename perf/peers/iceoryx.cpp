// iceoryx: Eclipse iceoryx 2.0 (Debian's), zero-copy publish/subscribe through the shared memory
// that the RouDi daemon manages (perf/peers/bin/iceoryx.daemon starts it). One untyped
// publisher/subscriber pair per direction, service "shmring-bench" / <name> / "0to1" or "1to0".
// Blocking on both ends: the publisher waits for the subscriber (ConsumerTooSlowPolicy::
// WAIT_FOR_CONSUMER with QueueFullPolicy::BLOCK_PRODUCER, a queue of 256 chunks), and the
// subscriber sleeps in a WaitSet (a semaphore) while its queue is empty. Each message is loaned,
// written and published: one copy in (the bench's message buffer) and one out, as for the others.
// Note: iceoryx's blocking publish waits for room with std::this_thread::yield() in a loop (its
// ChunkDistributor), not in the kernel: that is the library's choice, not this program's.
#include "peer.h"

#include <sys/socket.h>
#include <sys/un.h>

#include "iceoryx_hoofs/error_handling/error_handling.hpp"
#include "iceoryx_hoofs/log/logmanager.hpp"
#include "iceoryx_posh/popo/untyped_publisher.hpp"
#include "iceoryx_posh/popo/untyped_subscriber.hpp"
#include "iceoryx_posh/popo/wait_set.hpp"
#include "iceoryx_posh/runtime/posh_runtime.hpp"

#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>

/// The unix socket where RouDi listens (iceoryx 2.0: IOX_UDS_SOCKET_PATH_PREFIX + "roudi").
static const char iceoryx_roudi_socket[] = "/tmp/roudi";

typedef struct {
    const CShmBench_params *p;
    iox::popo::UntypedPublisher *publisher;
    iox::popo::UntypedSubscriber *subscriber;
    iox::popo::WaitSet<1> *waitset;
    uint64_t sent, received;
} iceoryx_ctx;

static const CShmBench_params *iceoryx_params;
static std::unique_ptr<iox::popo::UntypedPublisher> iceoryx_publisher;
static std::unique_ptr<iox::popo::UntypedSubscriber> iceoryx_subscriber;
static std::unique_ptr<iox::popo::WaitSet<1>> iceoryx_waitset;
static std::string iceoryx_runtime;

/// Before a failure exits: the runtime's socket and lock files in /tmp, which its destructor
/// would have removed (RouDi notices the missing keep-alives and frees the ports itself).
static void iceoryx_cleanup(void) {
    if (iceoryx_runtime.empty()) return;
    unlink(("/tmp/" + iceoryx_runtime).c_str());
    unlink(("/tmp/" + iceoryx_runtime + ".lock").c_str());
}

/// iceoryx reports errors through its handler: a fatal one (the default would std::terminate)
/// becomes the run's failure; the others are logged by iceoryx and the run goes on.
static void iceoryx_error(const iox::Error error, const std::function<void()> callback, const iox::ErrorLevel level) {
    if (callback) callback();
    const char *name = iox::ErrorHandler::toString(error);
    if (level == iox::ErrorLevel::FATAL)
        peer_fail(iceoryx_params ? iceoryx_params->shared : nullptr, "iceoryx: fatal library error: %s", name);
    fprintf(stderr, "bench role %d: iceoryx: %s error: %s (going on)\n", (int)getpid(),
            level == iox::ErrorLevel::SEVERE ? "severe" : "moderate", name);
}

/// A watchdog on the calls that wait for RouDi (registration, making ports): in iceoryx 2.0 a
/// client killed while it held a port's mutex (a publisher in publish) leaves RouDi blocked on
/// that mutex for good (iceoryx issues #325, #1711), and then every later client waits for it
/// (initRuntime up to 60 s, then a fatal error). iceoryx_watch(text) arms it for 10 s (a thread,
/// started on the first call); iceoryx_watch(nullptr) ends the thread before the measurement.
static std::mutex iceoryx_watch_lock;
static std::condition_variable iceoryx_watch_changed;
static const char *iceoryx_watch_what;
static std::chrono::steady_clock::time_point iceoryx_watch_deadline;
static std::thread iceoryx_watchdog;

static void iceoryx_watch(const char *what) {
    {
        std::lock_guard<std::mutex> guard(iceoryx_watch_lock);
        iceoryx_watch_what = what;
        iceoryx_watch_deadline = std::chrono::steady_clock::now() + std::chrono::nanoseconds(peer_open_timeout_ns);
    }
    iceoryx_watch_changed.notify_all();
    if (!what) {
        if (iceoryx_watchdog.joinable()) iceoryx_watchdog.join();
        return;
    }
    if (iceoryx_watchdog.joinable()) return;
    iceoryx_watchdog = std::thread([] {
        std::unique_lock<std::mutex> guard(iceoryx_watch_lock);
        while (iceoryx_watch_what) {
            iceoryx_watch_changed.wait_until(guard, iceoryx_watch_deadline);
            if (iceoryx_watch_what && std::chrono::steady_clock::now() >= iceoryx_watch_deadline)
                peer_fail(iceoryx_params ? iceoryx_params->shared : nullptr,
                          "iceoryx: %s: RouDi did not answer within 10 s (a client killed while holding a port's lock "
                          "blocks iceoryx 2.0's RouDi for good: restart perf/peers/bin/iceoryx.daemon)",
                          iceoryx_watch_what);
        }
    });
}

/// Whether RouDi accepts datagrams on its socket: without it initRuntime would wait 60 s.
static bool iceoryx_roudi_listening() {
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    struct sockaddr_un address;
    memset(&address, 0, sizeof(address));
    address.sun_family = AF_UNIX;
    snprintf(address.sun_path, sizeof(address.sun_path), "%s", iceoryx_roudi_socket);
    bool listening = connect(fd, (struct sockaddr *)&address, sizeof(address)) == 0;
    close(fd);
    return listening;
}

static iox::capro::ServiceDescription iceoryx_service(const CShmBench_params *p, const char *direction) {
    return iox::capro::ServiceDescription(iox::capro::IdString_t(iox::cxx::TruncateToCapacity, "shmring-bench"),
                                          iox::capro::IdString_t(iox::cxx::TruncateToCapacity, p->name),
                                          iox::capro::IdString_t(iox::cxx::TruncateToCapacity, direction));
}

static int iceoryx_open(iceoryx_ctx *context, const CShmBench_params *p) {
    peer_check_scenario(p, "iceoryx");
    context->p = p;
    iceoryx_params = p;
    static auto handler = iox::ErrorHandler::setTemporaryErrorHandler(iceoryx_error);
    (void)handler;
    // Warnings and errors only (a runtime logs its registration at the debug level by default).
    iox::log::LogManager::GetLogManager().SetDefaultLogLevel(iox::log::LogLevel::kWarn, iox::log::LogLevelOutput::kHideLogLevel);
    uint64_t started = CShmBench_monotonic_ns();
    while (!iceoryx_roudi_listening())
        if (!peer_retry(started, 20000))
            peer_fail(p->shared, "iceoryx: RouDi is not running (nothing listens on %s; start perf/peers/bin/iceoryx.daemon)",
                      iceoryx_roudi_socket);
    iceoryx_runtime = peer_name(p, p->role == 0 ? "-0" : "-1");
    iceoryx_watch("registering with RouDi (PoshRuntime::initRuntime)");
    iox::runtime::PoshRuntime::initRuntime(iox::RuntimeName_t(iox::cxx::TruncateToCapacity, iceoryx_runtime.c_str()));
    iceoryx_watch("making the publisher and subscriber ports");

    bool transmits = p->role == 0 || CShmBench_round_trip(p), receives = p->role == 1 || CShmBench_round_trip(p);
    if (transmits) {
        iox::popo::PublisherOptions options;
        options.historyCapacity = 0;
        options.subscriberTooSlowPolicy = iox::popo::ConsumerTooSlowPolicy::WAIT_FOR_CONSUMER;
        iceoryx_publisher.reset(new iox::popo::UntypedPublisher(iceoryx_service(p, p->role == 0 ? "0to1" : "1to0"), options));
        context->publisher = iceoryx_publisher.get();
    }
    if (receives) {
        iox::popo::SubscriberOptions options;
        options.queueCapacity = iox::MAX_SUBSCRIBER_QUEUE_CAPACITY;
        options.historyRequest = 0;
        options.queueFullPolicy = iox::popo::QueueFullPolicy::BLOCK_PRODUCER;
        iceoryx_subscriber.reset(new iox::popo::UntypedSubscriber(iceoryx_service(p, p->role == 0 ? "1to0" : "0to1"), options));
        context->subscriber = iceoryx_subscriber.get();
        iceoryx_waitset.reset(new iox::popo::WaitSet<1>());
        context->waitset = iceoryx_waitset.get();
        if (iceoryx_waitset->attachState(*iceoryx_subscriber, iox::popo::SubscriberState::HAS_DATA).has_error())
            peer_fail(p->shared, "iceoryx: WaitSet::attachState(HAS_DATA) failed");
    }
    iceoryx_watch(nullptr);
    // Both sides have made their ports; RouDi connects them on its discovery loop (every 100 ms).
    // Wait until this side's publisher has its subscriber (so that nothing published is lost)
    // and this side's subscriber is subscribed.
    started = CShmBench_monotonic_ns();
    while ((context->publisher && !context->publisher->hasSubscribers())
           || (context->subscriber && context->subscriber->getSubscriptionState() != iox::SubscribeState::SUBSCRIBED))
        if (!peer_retry(started, 2000))
            peer_fail(p->shared, "iceoryx: role %d: the other side's %s did not appear within 10 s (service shmring-bench/%s)",
                      p->role, context->publisher && !context->publisher->hasSubscribers() ? "subscriber" : "publisher",
                      p->name);
    return 0;
}

static inline void iceoryx_send(iceoryx_ctx *context, const uint8_t *message, uint32_t size) {
    context->sent++;
    auto loaned = context->publisher->loan(size, 8);
    if (loaned.has_error())
        peer_fail(context->p->shared, "iceoryx: loan of message %llu (%u bytes): %s", (unsigned long long)context->sent, size,
                  iox::popo::asStringLiteral(loaned.get_error()));
    void *payload = loaned.value();
    CShmBench_copy(payload, message, size);
    context->publisher->publish(payload);
}

static inline void iceoryx_flush(iceoryx_ctx *context) { (void)context; }

static inline void iceoryx_recv(iceoryx_ctx *context, uint8_t *message, uint32_t size) {
    context->received++;
    for (;;) {
        auto taken = context->subscriber->take();
        if (!taken.has_error()) {
            const void *payload = taken.value();
            uint32_t length = iox::mepoo::ChunkHeader::fromUserPayload(payload)->userPayloadSize();
            if (length != size)
                peer_fail(context->p->shared, "iceoryx: message %llu has %u bytes, not %u", (unsigned long long)context->received,
                          length, size);
            CShmBench_copy(message, payload, size);
            context->subscriber->release(payload);
            return;
        }
        if (taken.get_error() != iox::popo::ChunkReceiveResult::NO_CHUNK_AVAILABLE)
            peer_fail(context->p->shared, "iceoryx: take of message %llu: %s", (unsigned long long)context->received,
                      iox::popo::asStringLiteral(taken.get_error()));
        context->waitset->wait();  // sleeps until the queue has data
    }
}

#define BENCH_TRANSPORT iceoryx
#include "driver.h"

int main(int argc, char **argv) {
    CShmBench_params p;
    if (CShmBench_parse(argc - 1, argv + 1, &p) != 0) return 2;
    peer_cleanup = iceoryx_cleanup;
    int status = CShmBench_run_iceoryx(&p);
    // Ports before the runtime (a static that goes at exit, deregistering from RouDi).
    iceoryx_waitset.reset();
    iceoryx_subscriber.reset();
    iceoryx_publisher.reset();
    return status;
}
