import CShmAtomics
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
/// Two more uses of the same ring:
/// - an *interrupt*: an eventfd whose readability also ends a sleep (the `AsyncSequence` ends
///   its waiter's sleep with it when its task is cancelled), polled by a request that stays
///   queued across sleeps while the same descriptor is given;
/// - *arming* (docs/wakeup.md, "Event loops"): queue the futex wait without waiting for it; its
///   completion makes the registered `eventDescriptor` readable, for an event loop to see.
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
        /// The interrupt descriptor became readable.
        case interrupted
    }

    private var ring: IOURing?
    /// Why the io_uring path is not used (nil when it is).
    private(set) var fallbackReason: String?
    /// The poll for the connection's hang-up is queued (it stays armed across sleeps).
    private var pollArmed = false
    /// The hang-up was seen (for good: a connection does not come back).
    private var producerGone = false
    /// The futex wait queued and not completed yet, with the value it compares with: a later
    /// sleep on the same value reuses it (an armed wait that no wake ended), one on another value
    /// queues its own (the old one completes on its own: the word moved).
    private var pendingFutex: (tag: UInt64, expected: UInt32)?
    /// The poll of the interrupt descriptor, while queued.
    private var interrupt: (descriptor: Int32, tag: UInt64)?
    /// Futex waits that a wake ended since the last `takeWakes()` (statistics).
    private var wakes: UInt64 = 0
    /// Tags requests, so that a completion of an earlier one is told apart.
    private var generation: UInt64 = 0
    /// The eventfd registered on the ring (`makeEventDescriptor`), closed with the sleeper.
    private(set) var eventDescriptor: FileDescriptor?

    /// The ring's key, for errors.
    private let key: String
    /// The doorbell's `sleepers` count and `pass_on` token ("Waking many"), and the data epoch
    /// (the word every futex wait of this sleeper is on).
    private let sleepers: UnsafeMutablePointer<UInt32>
    private let passOn: UnsafeMutablePointer<UInt32>
    private let epochWord: UnsafeMutablePointer<UInt32>
    /// Futex waits of this sleeper that are counted in `sleepers` and not counted out yet
    /// (queued, or completed and not reaped), mirrored in the slot's `counted_waits` so that the
    /// producer's server can count them out if this consumer dies.
    private var countedWaits: UInt32 = 0 {
        // Relaxed: read by the server after the consumer's connection hung up (the hang-up
        // orders it); a death between the two updates leaves the count one too high.
        didSet { CShmAtomics_u32_store_relaxed(slotCountedWaits, countedWaits) }
    }
    private let slotCountedWaits: UnsafeMutablePointer<UInt32>

    private static let pollTag: UInt64 = 1
    private static let cancelTag: UInt64 = 2

    init(
        key: String, doorbell: UnsafeMutableRawPointer, epochWord: UnsafeMutablePointer<UInt32>,
        slotCountedWaits: UnsafeMutablePointer<UInt32>
    ) {
        self.key = key
        self.slotCountedWaits = slotCountedWaits
        self.epochWord = epochWord
        sleepers = (doorbell + RingLayout.Doorbell.sleepers).assumingMemoryBound(to: UInt32.self)
        passOn = (doorbell + RingLayout.Doorbell.passOn).assumingMemoryBound(to: UInt32.self)
        if let forced = getenv("SHMRING_WAKE_FALLBACK"), String(cString: forced) == "1" {
            fallbackReason = "SHMRING_WAKE_FALLBACK=1"
        } else if !IOURing.supportsFutexWait {
            fallbackReason = "this kernel's io_uring has no FUTEX_WAIT (6.7 or later needed)"
        } else {
            // No IORING_SETUP_SINGLE_ISSUER: a consumer may be used from one thread, then another.
            do {
                ring = try IOURing(entries: 16)
            } catch {
                fallbackReason = "\(error)"
            }
        }
    }

    deinit {
        reap()  // wakes already completed are passed on
        ring = nil  // first: the ring's requests hold references to the descriptors below
        leaveSleepers(countedWaits)  // the waits the teardown cancelled
        eventDescriptor?.closeIgnoringErrors()
    }

    /// Sleeps while `*word == expected`, at most `timeout`, or until `connection` hangs up or
    /// `interrupt` becomes readable. Then passes a wake on if the producer asked for it.
    func sleep(
        on word: UnsafeMutablePointer<UInt32>, expected: UInt32, connection: FileDescriptor,
        interrupt interruptDescriptor: FileDescriptor? = nil, timeout: Duration
    ) -> Outcome {
        let outcome: Outcome
        if ring == nil {
            outcome = fallbackSleep(on: word, expected: expected, connection: connection, interruptDescriptor, timeout)
        } else {
            outcome = sleepInRing(on: word, expected: expected, connection: connection, interruptDescriptor, timeout)
        }
        passWakeOn()
        return outcome
    }

    private func sleepInRing(
        on word: UnsafeMutablePointer<UInt32>, expected: UInt32, connection: FileDescriptor,
        _ interruptDescriptor: FileDescriptor?, _ timeout: Duration
    ) -> Outcome {
        guard let ring else { return .woken }
        reap()
        if producerGone { return .producerGone }
        let futexTag: UInt64
        do throws(SystemCallError) {
            try queueRequests(on: ring, connection: connection, interrupt: interruptDescriptor)
            futexTag = try queueFutexWait(on: ring, word: word, expected: expected)
        } catch {
            return giveUp("\(error)", .woken)
        }
        let deadline = ContinuousClock.now + timeout
        var outcome: Outcome?
        // Until this sleep's futex wait has completed (woken, changed, or cancelled): a wait left
        // queued would complete into a later sleep.
        while true {
            let completion: IOURing.Completion?
            do throws(SystemCallError) {
                if outcome != nil {
                    // Timed out, interrupted or the producer went: the futex wait was taken back.
                    completion = try ring.wait()
                } else {
                    // The first wait also submits what was queued: one system call.
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
            switch handle(completion) {
            case .futex(let tag, let result) where tag == futexTag:
                // 0: woken; -EAGAIN: the word had changed already; -ECANCELED: taken back.
                guard result == 0 || result == -EAGAIN || result == -ECANCELED else {
                    return giveUp("io_uring futex wait: \(Errno(rawValue: -result))", outcome ?? .woken)
                }
                return outcome ?? .woken
            case .hangUp, .interrupted:
                if outcome == nil {
                    outcome = producerGone ? .producerGone : .interrupted
                    if let failed = cancel(futexTag, on: ring) { return giveUp(failed, outcome!) }
                }
            case .futex, .other:
                continue
            }
        }
    }

    /// Queues a wait while `*word == expected` (and the hang-up poll) without waiting: its
    /// completion makes `eventDescriptor` readable. Returns false when the producer is gone.
    func arm(on word: UnsafeMutablePointer<UInt32>, expected: UInt32, connection: FileDescriptor) throws(RingError)
        -> Bool
    {
        guard let ring else { throw unsupported() }
        reap()
        if producerGone { return false }
        do throws(SystemCallError) {
            try queueRequests(on: ring, connection: connection, interrupt: nil)
            _ = try queueFutexWait(on: ring, word: word, expected: expected)
            try ring.submit()
        } catch {
            throw RingError(error, key: key)
        }
        return true
    }

    /// The eventfd that becomes readable whenever a request of this sleeper completes, made and
    /// registered on its ring at the first call.
    func makeEventDescriptor() throws(RingError) -> FileDescriptor {
        if let eventDescriptor { return eventDescriptor }
        guard let ring else { throw unsupported() }
        let raw = CShmLinux_eventfd(0, CShmLinux_EFD_CLOEXEC | CShmLinux_EFD_NONBLOCK)
        guard raw >= 0 else {
            throw RingError(
                .outOfResources, key: key, "cannot make an eventfd", syscall: "eventfd", errno: Errno(rawValue: errno))
        }
        let descriptor = FileDescriptor(rawValue: raw)
        do throws(SystemCallError) {
            try ring.register(eventFD: descriptor)
        } catch {
            descriptor.closeIgnoringErrors()
            throw RingError(error, key: key)
        }
        eventDescriptor = descriptor
        return descriptor
    }

    private func unsupported() -> RingError {
        RingError(
            .unsupported, key: key,
            "this consumer of \(key) sleeps without io_uring (\(fallbackReason ?? "unknown")), so it has no wake-up "
                + "descriptor for an event loop")
    }

    /// Futex waits that a wake ended since the last call.
    func takeWakes() -> UInt64 {
        defer { wakes = 0 }
        return wakes
    }

    /// Takes back the poll of the interrupt descriptor (its owner is about to close it).
    func forgetInterrupt() {
        guard let ring, let queued = interrupt else { return }
        interrupt = nil
        if let failed = cancel(queued.tag, on: ring) { _ = giveUp(failed, .woken) }
    }

    // MARK: - Requests and completions

    private enum Event {
        case futex(tag: UInt64, result: Int32)
        case hangUp
        case interrupted
        case other
    }

    /// Updates the state for one completion.
    private func handle(_ completion: IOURing.Completion) -> Event {
        let tag = completion.userData
        if tag == Self.pollTag {
            pollArmed = false
            producerGone = true
            return .hangUp
        }
        switch tag & 0xff {
        case 3:
            if tag == pendingFutex?.tag { pendingFutex = nil }
            leaveSleepers(1)
            if completion.result == 0 {
                wakes &+= 1
                // Whichever of this consumer's waits the producer's single wake picked (an armed
                // one too, or one a later sleep replaced), the wake is passed on here.
                passWakeOn()
            }
            return .futex(tag: tag, result: completion.result)
        case 4 where tag == interrupt?.tag && completion.result != -ECANCELED:
            interrupt = nil
            return .interrupted
        default:
            return .other  // a cancellation, or a request taken back
        }
    }

    /// Handles every completion already there, passing each wake among them on; no system call
    /// (also called before a consumer decides whether to sleep, and by `acknowledgeWakeEvent`).
    func reap() {
        guard let ring else { return }
        while let completion = ring.peek() { _ = handle(completion) }
    }

    /// Queues the hang-up poll and the interrupt's poll where they are not queued yet.
    private func queueRequests(on ring: IOURing, connection: FileDescriptor, interrupt descriptor: FileDescriptor?)
        throws(SystemCallError)
    {
        if !pollArmed {
            let events = UInt32(UInt16(bitPattern: CShmLinux_POLLRDHUP)) | UInt32(POLLHUP) | UInt32(POLLERR)
            try ring.preparePoll(connection, events: events, userData: Self.pollTag)
            pollArmed = true
        }
        guard let descriptor, interrupt?.descriptor != descriptor.rawValue else { return }
        if let old = interrupt {
            try ring.prepareCancel(old.tag, userData: Self.cancelTag)
            interrupt = nil
        }
        generation &+= 1
        let tag = generation << 8 | 4
        try ring.preparePoll(descriptor, events: UInt32(POLLIN), userData: tag)
        interrupt = (descriptor.rawValue, tag)
    }

    /// Queues a futex wait on `expected` unless one is still queued on that value; its tag.
    private func queueFutexWait(on ring: IOURing, word: UnsafeMutablePointer<UInt32>, expected: UInt32)
        throws(SystemCallError) -> UInt64
    {
        if let pending = pendingFutex, pending.expected == expected { return pending.tag }
        generation &+= 1
        let tag = generation << 8 | 3
        try ring.prepareFutexWait(word, expected: expected, userData: tag)
        joinSleepers()
        pendingFutex = (tag, expected)
        return tag
    }

    // MARK: - Waking many (docs/wakeup.md, "Waking many")

    /// Counts this consumer among the sleepers, before its futex wait can reach the kernel.
    /// Seq_cst (a locked instruction, a full barrier): the count before the wait's read of the
    /// epoch, against the producer's epoch store before its read of the count. Partner: the
    /// fence in RingWriter.wakeSleepers.
    private func joinSleepers() {
        _ = CShmAtomics_u32_fetch_add_seq_cst(sleepers, 1)
        // After the shared count: a death between the two leaves `sleepers` too high (harmless),
        // never too low (the server would take out a wait that was never counted in).
        countedWaits &+= 1
    }

    /// Counts `waits` out again once they are over (relaxed: a hint; a count too high costs a
    /// pass-on that wakes nobody, and a count cannot go too low while a wait is queued). A
    /// consumer killed while asleep never counts itself out: the count then stays too high.
    private func leaveSleepers(_ waits: UInt32) {
        let waits = min(waits, countedWaits)
        guard waits > 0 else { return }
        countedWaits -= waits
        _ = CShmAtomics_u32_fetch_add_relaxed(sleepers, 0 &- waits)
    }

    /// The producer woke one sleeper and asked for the wake to be passed on (`pass_on` holds the
    /// current epoch): the first consumer back from a sleep that takes the token wakes every
    /// other sleeper, with one `FUTEX_WAKE` of its own. Called for every futex wait of this
    /// sleeper that a wake ended (`handle`), and after every sleep however it ended.
    func passWakeOn() {
        // Acquire, as every load of the epoch (RingConsumer.announceSleep). Relaxed for the
        // token: the producer stored it (relaxed) before its FUTEX_WAKE, and that system call
        // comes before this consumer's wait returned; a token seen late only means another
        // consumer passed the wake on, or a stale epoch.
        var token = CShmAtomics_u32_load_acquire(epochWord)
        guard token != 0, CShmAtomics_u32_load_relaxed(passOn) == token else { return }
        // Acq_rel: between consumers, exactly one takes the token (a failed exchange takes
        // nothing); the producer's store is ordered by its system call, as above.
        if CShmAtomics_u32_compare_exchange_acq_rel(passOn, &token, 0) {
            _ = CShmLinux_futex_wake(epochWord, Int32.max, false)
        }
    }

    /// Takes back the request tagged `tag`; a description of the failure, or nil.
    private func cancel(_ tag: UInt64, on ring: IOURing) -> String? {
        do throws(SystemCallError) {
            try ring.prepareCancel(tag, userData: Self.cancelTag)
            try ring.submit()
            return nil
        } catch {
            return "io_uring could not cancel a request: \(error)"
        }
    }

    /// The io_uring path failed in a way that leaves its state unknown: tear the ring down (which
    /// cancels whatever is queued) and sleep in `FUTEX_WAIT` from now on.
    private func giveUp(_ reason: String, _ outcome: Outcome) -> Outcome {
        reap()  // wakes already completed are passed on
        ring = nil  // cancels what is queued: the futex waits counted in `sleepers` among them
        pollArmed = false
        leaveSleepers(countedWaits)  // every wait still counted: the teardown cancelled them
        pendingFutex = nil
        interrupt = nil
        fallbackReason = reason
        return outcome
    }

    /// `FUTEX_WAIT` with the timeout, then a look at the connection. With an interrupt
    /// descriptor, in slices of at most 20 ms, looking at it between them.
    private func fallbackSleep(
        on word: UnsafeMutablePointer<UInt32>, expected: UInt32, connection: FileDescriptor,
        _ interruptDescriptor: FileDescriptor?, _ timeout: Duration
    ) -> Outcome {
        let deadline = ContinuousClock.now + timeout
        var timedOut = false
        while true {
            let left = deadline - ContinuousClock.now
            let slice = interruptDescriptor == nil ? left : min(left, .milliseconds(20))
            let nanoseconds = max(slice, .zero).clampedNanoseconds
            var time = timespec(tv_sec: Int(nanoseconds / 1_000_000_000), tv_nsec: Int(nanoseconds % 1_000_000_000))
            joinSleepers()
            let woken = CShmLinux_futex_wait(word, expected, &time, false) == 0
            let sliceEnded = !woken && errno == ETIMEDOUT
            leaveSleepers(1)
            if woken { wakes &+= 1 }
            if let interruptDescriptor, Self.isReadable(interruptDescriptor, events: Int16(POLLIN)) {
                return .interrupted
            }
            if !sliceEnded { break }
            if ContinuousClock.now >= deadline {
                timedOut = true
                break
            }
        }
        let hangUp = CShmLinux_POLLRDHUP | Int16(POLLHUP) | Int16(POLLERR)
        if Self.isReadable(connection, events: hangUp) { return .producerGone }
        return timedOut ? .timedOut : .woken
    }

    /// Whether `descriptor` has one of `events` now (a poll that does not wait).
    private static func isReadable(_ descriptor: FileDescriptor, events: Int16) -> Bool {
        var entry = pollfd(fd: descriptor.rawValue, events: events, revents: 0)
        return Glibc.poll(&entry, 1, 0) > 0 && entry.revents & events != 0
    }
}
