import CShmLinux
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// How a consumer sleeps (docs/wakeup.md, "Sleeping"): in one io_uring wait that covers the
/// data epoch (`IORING_OP_FUTEX_WAIT`), the producer's rendezvous connection (a poll for its
/// hang-up) and a timeout, so that one sleep ends on "data may have come", "the producer is
/// gone" or "time to look again". Where io_uring cannot do that (an old kernel, a seccomp filter
/// that refuses `io_uring_setup`, or `SHMRING_WAKE_FALLBACK=1` for tests), it sleeps in
/// `FUTEX_WAIT` with the timeout and looks at the connection afterwards; `fallbackReason` says why.
///
/// Owned by one consumer; not thread-safe (neither is the consumer).
final class Sleeper {
    /// What ended a sleep.
    enum Outcome: Equatable {
        /// The word changed (a wake, or a commit before the kernel queued the sleeper).
        case woken
        case timedOut
        /// The rendezvous connection hung up.
        case producerGone
    }

    private var ring: IOURing?
    /// Why the io_uring path is not used (nil when it is).
    private(set) var fallbackReason: String?
    /// The poll for the connection's hang-up is queued (it stays armed across sleeps).
    private var pollArmed = false
    /// Tags this sleep's futex wait, so that a completion of an earlier one is told apart.
    private var generation: UInt64 = 0

    private static let pollTag: UInt64 = 1
    private static let cancelTag: UInt64 = 2

    init() {
        if let forced = getenv("SHMRING_WAKE_FALLBACK"), String(cString: forced) == "1" {
            fallbackReason = "SHMRING_WAKE_FALLBACK=1"
        } else if !IOURing.supportsFutexWait {
            fallbackReason = "this kernel's io_uring has no FUTEX_WAIT (6.7 or later needed)"
        } else {
            // No IORING_SETUP_SINGLE_ISSUER: a consumer may be used from one thread, then another.
            do {
                ring = try IOURing(entries: 8)
            } catch {
                fallbackReason = "\(error)"
            }
        }
    }

    /// Sleeps while `*word == expected`, at most `timeout`, or until `connection` hangs up.
    func sleep(on word: UnsafeMutablePointer<UInt32>, expected: UInt32, connection: FileDescriptor, timeout: Duration)
        -> Outcome
    {
        guard let ring else { return fallbackSleep(on: word, expected: expected, connection: connection, timeout) }
        generation &+= 1
        let futexTag = generation << 8 | 3
        do throws(SystemCallError) {
            if !pollArmed {
                let events = UInt32(UInt16(bitPattern: CShmLinux_POLLRDHUP)) | UInt32(POLLHUP) | UInt32(POLLERR)
                try ring.preparePoll(connection, events: events, userData: Self.pollTag)
                pollArmed = true
            }
            try ring.prepareFutexWait(word, expected: expected, userData: futexTag)
        } catch {
            return fallbackSleep(on: word, expected: expected, connection: connection, timeout)
        }
        let deadline = ContinuousClock.now + timeout
        var outcome: Outcome?
        // Until this sleep's futex wait has completed (woken, changed, or cancelled): a wait left
        // queued would complete into a later sleep.
        while true {
            let completion: IOURing.Completion?
            do throws(SystemCallError) {
                if outcome != nil {
                    // Timed out or the producer went: the futex wait was taken back (below).
                    completion = try ring.wait()
                } else {
                    // The first wait also submits the futex wait (and a new poll): one system call.
                    completion = try ring.submitAndWait(timeout: max(deadline - ContinuousClock.now, .zero))
                }
            } catch {
                return giveUp("\(error)", outcome ?? .woken)
            }
            guard let completion else {
                outcome = .timedOut
                if let failed = cancel(futexTag, on: ring) { return giveUp(failed, .timedOut) }
                continue
            }
            switch completion.userData {
            case futexTag:
                // 0: woken; -EAGAIN: the word had changed already; -ECANCELED: taken back.
                let result = completion.result
                guard result == 0 || result == -EAGAIN || result == -ECANCELED else {
                    return giveUp("io_uring futex wait: \(Errno(rawValue: -result))", outcome ?? .woken)
                }
                return outcome ?? .woken
            case Self.pollTag:
                pollArmed = false
                if outcome == nil, let failed = cancel(futexTag, on: ring) { return giveUp(failed, .producerGone) }
                outcome = .producerGone
            default:
                continue  // the cancellation's own completion
            }
        }
    }

    /// Takes the futex wait tagged `tag` back; a description of the failure, or nil.
    private func cancel(_ tag: UInt64, on ring: IOURing) -> String? {
        do throws(SystemCallError) {
            try ring.prepareCancel(tag, userData: Self.cancelTag)
            try ring.submit()
            return nil
        } catch {
            return "io_uring could not cancel a futex wait: \(error)"
        }
    }

    /// The io_uring path failed in a way that leaves its state unknown: tear the ring down (which
    /// cancels whatever is queued) and sleep in `FUTEX_WAIT` from now on.
    private func giveUp(_ reason: String, _ outcome: Outcome) -> Outcome {
        ring = nil
        pollArmed = false
        fallbackReason = reason
        return outcome
    }

    /// `FUTEX_WAIT` with the timeout, then a look at the connection.
    private func fallbackSleep(
        on word: UnsafeMutablePointer<UInt32>, expected: UInt32, connection: FileDescriptor, _ timeout: Duration
    ) -> Outcome {
        let nanoseconds = timeout.clampedNanoseconds
        var time = timespec(tv_sec: Int(nanoseconds / 1_000_000_000), tv_nsec: Int(nanoseconds % 1_000_000_000))
        let timedOut = CShmLinux_futex_wait(word, expected, &time, false) != 0 && errno == ETIMEDOUT
        var entry = pollfd(fd: connection.rawValue, events: CShmLinux_POLLRDHUP, revents: 0)
        let hangUp = CShmLinux_POLLRDHUP | Int16(POLLHUP) | Int16(POLLERR)
        if Glibc.poll(&entry, 1, 0) > 0 && entry.revents & hangUp != 0 { return .producerGone }
        return timedOut ? .timedOut : .woken
    }
}
