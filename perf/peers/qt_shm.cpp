// qt-shm: the classic Qt recipe. A QSharedMemory segment holds a ring of 1024 slots per direction
// (the message size rounded up to 64 bytes); two QSystemSemaphores per ring count its "free" and
// "used" slots: the producer acquires free, writes its slot, releases used; the consumer acquires
// used, reads, releases free. Both wait in semop(2).
//
// It does not last: on Linux QSystemSemaphore is a System V semaphore operated with SEM_UNDO,
// and the kernel keeps, per process and semaphore, the sum of the undo adjustments in a counter
// limited to +-32767. The producer only acquires "free" and the consumer only acquires "used",
// so each side's counter grows by one per message, and the 32768th acquire fails with ERANGE
// ("out of resources"): after about 32 k messages the recipe stops working. The program reports
// that as the run's failure and does not work around it (no fresh semaphores, no other API).
// Then it makes sure the other side does not wait forever: the failing side raises a flag in the
// segment, releases what the other side may be waiting on, and waits for its acknowledgment
// before it exits (at exit the kernel applies its undo adjustments, which would take those
// releases back).
#include "peer.h"

#include <QtCore/QSharedMemory>
#include <QtCore/QString>
#include <QtCore/QSystemSemaphore>

#include <memory>

static const uint64_t qt_shm_slots = 1024;
static const uint64_t qt_shm_magic = 0x7174736868726e67ull;

/// The segment's first page; the rings follow at 4096 and 4096 + ring bytes.
typedef struct {
    uint64_t magic;        // written last by role 0
    uint64_t slot_bytes;
    uint64_t rings;
    uint64_t failed_role;  // 1 + the role that failed on a semaphore (compare-and-swap from 0)
    uint64_t acknowledged; // the other side has seen failed_role
    uint64_t finished;     // role 1 is done with the semaphores: role 0 may remove them
} qt_shm_header;

typedef struct {
    const CShmBench_params *p;
    qt_shm_header *header;
    uint8_t *transmit_slots, *receive_slots;
    QSystemSemaphore *transmit_free, *transmit_used, *receive_free, *receive_used;
    uint64_t slot_bytes, sent, received;
} qt_shm_ctx;

static std::unique_ptr<QSharedMemory> qt_shm_memory;
static std::unique_ptr<QSystemSemaphore> qt_shm_semaphores[2][2];  // [ring][0: free, 1: used]
static qt_shm_ctx *qt_shm_context;

/// Leaves the segment and the semaphores (at the end, and before exiting on a failure). Role 1
/// says it is done with them; role 0 made the semaphores and removes them when they go, so it
/// waits for that first (QSystemSemaphore would quietly make a new one for a late operation).
/// The last one to detach removes the segment.
static void qt_shm_close(const CShmBench_params *p) {
    qt_shm_header *header = qt_shm_context ? qt_shm_context->header : nullptr;
    if (header && p->role == 1) CShmBench_store_release(&header->finished, 1);
    if (header && p->role == 0) {
        uint64_t started = CShmBench_monotonic_ns();
        while (CShmBench_load_acquire(&header->finished) == 0 && CShmBench_load_acquire(&p->shared->failed) == 0
               && CShmBench_monotonic_ns() - started < peer_open_timeout_ns)
            usleep(1000);
    }
    for (auto &ring : qt_shm_semaphores)
        for (auto &semaphore : ring) semaphore.reset();
    if (qt_shm_context) qt_shm_context->header = nullptr;
    if (qt_shm_memory) {
        qt_shm_memory->detach();
        qt_shm_memory.reset();
    }
}

static const CShmBench_params *qt_shm_params;
static void qt_shm_close_at_exit(void) { qt_shm_close(qt_shm_params); }

static QString qt_shm_key(const CShmBench_params *p, const char *suffix) {
    return QString::fromUtf8(peer_name(p, suffix).c_str());
}

/// Waits up to `nanoseconds` for `word` to become non-zero (the failure and exit paths only).
static bool qt_shm_await(const uint64_t *word, uint64_t nanoseconds) {
    uint64_t started = CShmBench_monotonic_ns();
    while (CShmBench_load_acquire(word) == 0) {
        if (CShmBench_monotonic_ns() - started >= nanoseconds) return false;
        usleep(1000);
    }
    return true;
}

/// After the other side has failed: acknowledge, let its failure be recorded first, and leave.
[[noreturn]] static void qt_shm_follow(qt_shm_ctx *context, uint64_t failed_role) {
    CShmBench_store_release(&context->header->acknowledged, 1);
    qt_shm_close(context->p);
    qt_shm_await(&context->p->shared->failed, 2000000000ull);
    CShmBench_fail(context->p->shared, "qt-shm: role %d stops: role %d failed", context->p->role, (int)failed_role - 1);
    _exit(1);  // not reached
}

/// A semaphore operation failed: record it as the run's failure (after waking the other side).
[[noreturn]] static void qt_shm_semaphore_failed(qt_shm_ctx *context, const char *operation, const char *which,
                                                 QSystemSemaphore *semaphore, uint64_t message) {
    const CShmBench_params *p = context->p;
    int error = errno;
    QByteArray reason = semaphore->errorString().toUtf8();
    uint64_t expected = 0;
    if (!__atomic_compare_exchange_n(&context->header->failed_role, &expected, (uint64_t)p->role + 1, 0, __ATOMIC_ACQ_REL,
                                     __ATOMIC_ACQUIRE))
        qt_shm_follow(context, expected);  // the other side failed first
    // Wake the other side wherever it may wait: it acquires the receive ring's "free" and the
    // transmit ring's "used" semaphores.
    if (context->receive_free) context->receive_free->release();
    if (context->transmit_used) context->transmit_used->release();
    qt_shm_await(&context->header->acknowledged, 2000000000ull);
    peer_fail(p->shared, "qt-shm: QSystemSemaphore::%s() on \"%s\" failed at message %llu of role %d: %s (errno %d: %s)",
              operation, which, (unsigned long long)message, p->role, reason.constData(), error, strerror(error));
}

static inline void qt_shm_check_other(qt_shm_ctx *context) {
    uint64_t failed = CShmBench_load_acquire(&context->header->failed_role);
    if (failed != 0 && failed != (uint64_t)context->p->role + 1) qt_shm_follow(context, failed);
}

static void qt_shm_check_semaphore(const CShmBench_params *p, QSystemSemaphore *semaphore) {
    if (semaphore->error() != QSystemSemaphore::NoError)
        peer_fail(p->shared, "qt-shm: QSystemSemaphore \"%s\": %s", semaphore->key().toUtf8().constData(),
                  semaphore->errorString().toUtf8().constData());
}

static int qt_shm_open(qt_shm_ctx *context, const CShmBench_params *p) {
    peer_check_scenario(p, "qt-shm");
    memset(context, 0, sizeof(*context));
    context->p = p;
    qt_shm_context = context;
    int rings = CShmBench_round_trip(p) ? 2 : 1;  // ring 0 carries role 0 -> role 1, ring 1 the echo
    uint64_t slot_bytes = (p->size + 63u) & ~63u, ring_bytes = qt_shm_slots * slot_bytes;
    qsizetype bytes = (qsizetype)(4096 + rings * ring_bytes);
    qt_shm_memory.reset(new QSharedMemory(qt_shm_key(p, "-qt-shm")));
    static const char *kinds[2] = {"free", "used"};
    if (p->role == 0) {
        // The semaphores first (Create resets their counts), then the segment role 1 looks for.
        for (int ring = 0; ring < rings; ring++)
            for (int kind = 0; kind < 2; kind++) {
                char suffix[32];
                snprintf(suffix, sizeof(suffix), "-qt-%s-%d", kinds[kind], ring);
                qt_shm_semaphores[ring][kind].reset(new QSystemSemaphore(
                    qt_shm_key(p, suffix), kind == 0 ? (int)qt_shm_slots : 0, QSystemSemaphore::Create));
                qt_shm_check_semaphore(p, qt_shm_semaphores[ring][kind].get());
            }
        if (!qt_shm_memory->create(bytes))
            peer_fail(p->shared, "qt-shm: QSharedMemory::create(%lld) \"%s\": %s", (long long)bytes,
                      qt_shm_memory->key().toUtf8().constData(), qt_shm_memory->errorString().toUtf8().constData());
        context->header = (qt_shm_header *)qt_shm_memory->data();
        context->header->slot_bytes = slot_bytes;
        context->header->rings = (uint64_t)rings;
        CShmBench_store_release(&context->header->magic, qt_shm_magic);
    } else {
        uint64_t started = CShmBench_monotonic_ns();
        while (!qt_shm_memory->attach()) {
            if (qt_shm_memory->error() != QSharedMemory::NotFound || !peer_retry(started))
                peer_fail(p->shared, "qt-shm: QSharedMemory::attach \"%s\": %s", qt_shm_memory->key().toUtf8().constData(),
                          qt_shm_memory->errorString().toUtf8().constData());
        }
        context->header = (qt_shm_header *)qt_shm_memory->data();
        if (!qt_shm_await(&context->header->magic, peer_open_timeout_ns))
            peer_fail(p->shared, "qt-shm: the segment \"%s\" was never initialized", qt_shm_memory->key().toUtf8().constData());
        if (qt_shm_memory->size() < bytes || context->header->slot_bytes != slot_bytes || context->header->rings != (uint64_t)rings)
            peer_fail(p->shared, "qt-shm: the segment \"%s\" has another shape (size or scenario)",
                      qt_shm_memory->key().toUtf8().constData());
        // The semaphores exist (role 0 made them before the segment); Open keeps their counts.
        for (int ring = 0; ring < rings; ring++)
            for (int kind = 0; kind < 2; kind++) {
                char suffix[32];
                snprintf(suffix, sizeof(suffix), "-qt-%s-%d", kinds[kind], ring);
                qt_shm_semaphores[ring][kind].reset(new QSystemSemaphore(qt_shm_key(p, suffix), 0, QSystemSemaphore::Open));
                qt_shm_check_semaphore(p, qt_shm_semaphores[ring][kind].get());
            }
    }
    uint8_t *base = (uint8_t *)qt_shm_memory->data() + 4096;
    int transmit = p->role == 0 ? 0 : rings - 1, receive = p->role == 0 ? rings - 1 : 0;
    context->slot_bytes = slot_bytes;
    if (p->role == 0 || rings == 2) {
        context->transmit_slots = base + transmit * ring_bytes;
        context->transmit_free = qt_shm_semaphores[transmit][0].get();
        context->transmit_used = qt_shm_semaphores[transmit][1].get();
    }
    if (p->role == 1 || rings == 2) {
        context->receive_slots = base + receive * ring_bytes;
        context->receive_free = qt_shm_semaphores[receive][0].get();
        context->receive_used = qt_shm_semaphores[receive][1].get();
    }
    return 0;
}

static inline void qt_shm_send(qt_shm_ctx *context, const uint8_t *message, uint32_t size) {
    uint64_t index = context->sent++;
    if (!context->transmit_free->acquire()) qt_shm_semaphore_failed(context, "acquire", "free", context->transmit_free, index + 1);
    qt_shm_check_other(context);
    CShmBench_copy(context->transmit_slots + (index % qt_shm_slots) * context->slot_bytes, message, size);
    if (!context->transmit_used->release()) qt_shm_semaphore_failed(context, "release", "used", context->transmit_used, index + 1);
}

static inline void qt_shm_flush(qt_shm_ctx *context) { (void)context; }

static inline void qt_shm_recv(qt_shm_ctx *context, uint8_t *message, uint32_t size) {
    uint64_t index = context->received++;
    if (!context->receive_used->acquire()) {
        qt_shm_check_other(context);
        qt_shm_semaphore_failed(context, "acquire", "used", context->receive_used, index + 1);
    }
    qt_shm_check_other(context);
    CShmBench_copy(message, context->receive_slots + (index % qt_shm_slots) * context->slot_bytes, size);
    if (!context->receive_free->release()) qt_shm_semaphore_failed(context, "release", "free", context->receive_free, index + 1);
}

#define BENCH_TRANSPORT qt_shm
#include "driver.h"

int main(int argc, char **argv) {
    CShmBench_params p;
    if (CShmBench_parse(argc - 1, argv + 1, &p) != 0) return 2;
    qt_shm_params = &p;
    peer_cleanup = qt_shm_close_at_exit;
    int status = CShmBench_run_qt_shm(&p);
    qt_shm_close(&p);
    return status;
}
