import CShmLinux
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A small io_uring instance, through the opaque C wrapper of CShmLinux.
///
/// ShmRing's sleeping consumers wait in one io_uring wait that covers a futex word, the
/// producer's liveness and a timeout (`Sleeper`, docs/wakeup.md). This type is the Swift face of
/// that wrapper; `<liburing.h>` never reaches Swift.
package final class IOURing {
    /// One completion.
    package struct Completion: Equatable, Sendable {
        /// The tag given when the request was prepared.
        package var userData: UInt64
        /// The request's result: >= 0 on success, a negative errno value otherwise.
        package var result: Int32
    }

    private let ring: OpaquePointer

    /// Creates a ring with room for `entries` requests.
    ///
    /// - Throws: ENOSYS or EPERM where io_uring is unavailable (seccomp in some containers).
    package init(entries: UInt32 = 8) throws(SystemCallError) {
        var error: Int32 = 0
        guard let ring = CShmLinux_uring_create(entries, &error) else {
            throw SystemCallError("io_uring_queue_init", Errno(rawValue: error))
        }
        self.ring = ring
    }

    deinit { CShmLinux_uring_destroy(ring) }

    /// Whether io_uring can be used here (seccomp profiles of some containers refuse it).
    package static var isAvailable: Bool { (try? IOURing(entries: 1)) != nil }

    /// Whether this kernel supports `IORING_OP_FUTEX_WAIT` (6.7+).
    package static var supportsFutexWait: Bool { CShmLinux_uring_probe_futex_wait() == 1 }

    /// Makes `eventFD` readable whenever a completion is posted (`io_uring_register_eventfd`).
    package func register(eventFD: FileDescriptor) throws(SystemCallError) {
        _ = try negativeErrnoCall("io_uring_register_eventfd") {
            CShmLinux_uring_register_eventfd(ring, eventFD.rawValue)
        }
    }

    /// Queues a wait on a shared futex word; it completes with 0 when woken, -EAGAIN at once if
    /// `word` no longer holds `expected`.
    package func prepareFutexWait(
        _ word: UnsafeMutablePointer<UInt32>, expected: UInt32, userData: UInt64
    ) throws(SystemCallError) {
        _ = try negativeErrnoCall("io_uring_get_sqe") {
            CShmLinux_uring_prep_futex_wait(ring, word, expected, userData)
        }
    }

    /// Queues a one-shot poll of `descriptor` for `events` (`POLLIN`, `POLLRDHUP`, ...).
    package func preparePoll(_ descriptor: FileDescriptor, events: UInt32, userData: UInt64) throws(SystemCallError) {
        _ = try negativeErrnoCall("io_uring_get_sqe") {
            CShmLinux_uring_prep_poll(ring, descriptor.rawValue, events, userData)
        }
    }

    /// Queues a timeout (completes with -ETIME) and submits everything queued so far.
    package func submitTimeout(after duration: Duration, userData: UInt64) throws(SystemCallError) {
        // Not retried on EINTR: a failed submit leaves the timeout queued, and a retry would queue
        // a second one with the same tag.
        let rc = CShmLinux_uring_prep_timeout(ring, duration.clampedNanoseconds, userData)
        guard rc >= 0 else { throw SystemCallError("io_uring_submit(timeout)", Errno(rawValue: -rc)) }
    }

    /// Queues the cancellation of the request tagged `target`.
    package func prepareCancel(_ target: UInt64, userData: UInt64) throws(SystemCallError) {
        _ = try negativeErrnoCall("io_uring_get_sqe") { CShmLinux_uring_prep_cancel(ring, target, userData) }
    }

    /// Submits what was queued; returns how many requests were submitted.
    @discardableResult
    package func submit() throws(SystemCallError) -> Int {
        Int(try negativeErrnoCall("io_uring_submit") { CShmLinux_uring_submit(ring) })
    }

    /// Waits for one completion, at most `timeout` (nil: no limit); nil when the time ran out.
    package func wait(timeout: Duration? = nil) throws(SystemCallError) -> Completion? {
        var completion = CShmLinux_completion()
        let nanoseconds = timeout?.clampedNanoseconds ?? -1
        let rc = CShmLinux_uring_wait(ring, nanoseconds, &completion)
        if rc == -ETIME { return nil }
        guard rc == 0 else { throw SystemCallError("io_uring_wait_cqe", Errno(rawValue: -rc)) }
        return Completion(userData: completion.user_data, result: completion.result)
    }

    /// Submits what was queued and waits for one completion, at most `timeout`, in one system
    /// call; nil when the time ran out.
    package func submitAndWait(timeout: Duration) throws(SystemCallError) -> Completion? {
        var completion = CShmLinux_completion()
        let rc = CShmLinux_uring_submit_and_wait(ring, timeout.clampedNanoseconds, &completion)
        if rc == -ETIME { return nil }
        guard rc == 0 else { throw SystemCallError("io_uring_submit_and_wait", Errno(rawValue: -rc)) }
        return Completion(userData: completion.user_data, result: completion.result)
    }

    /// A completion that is ready now, or nil.
    package func peek() -> Completion? {
        var completion = CShmLinux_completion()
        guard CShmLinux_uring_peek(ring, &completion) == 1 else { return nil }
        return Completion(userData: completion.user_data, result: completion.result)
    }
}
