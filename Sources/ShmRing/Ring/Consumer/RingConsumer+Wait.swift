import CShmAtomics
import CShmLinux
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Sleeping until the producer publishes (docs/wakeup.md).
extension RingConsumer {
    /// What ended a `wait`.
    public enum WaitResult: Sendable, Equatable {
        /// A message can be polled, or the producer woke this consumer (a poll may still find
        /// nothing: wakes are for everyone asleep on the ring).
        case ready
        /// Nothing came within the timeout.
        case timedOut
        /// The producer is gone (its rendezvous connection hung up) and nothing is left to read.
        case producerGone
    }

    /// Waits until a message can be polled, the producer goes, or `timeout` passes: without
    /// spinning, and without costing the producer anything while nobody sleeps. Returns at once
    /// when a message is already there.
    ///
    /// The consumer says which epoch it sleeps on in the ring's doorbell, fences (`membarrier`, so
    /// that the producer never needs a fence of its own), looks for a message once more, and only
    /// then sleeps, in one io_uring wait that also watches the producer's connection (`sleeper`
    /// says when it falls back to `FUTEX_WAIT`). A sleep costs about one kernel wake-up on the
    /// first message after it, plus the membarrier before it (a few microseconds).
    ///
    /// - Throws: `RingError` with `.closed` after `detach()`.
    public func wait(timeout: Duration) throws(RingError) -> WaitResult {
        switch try wait(timeout: timeout, interrupt: nil) {
        case .ready, .interrupted: .ready  // nothing interrupts without an interrupt descriptor
        case .timedOut: .timedOut
        case .producerGone: .producerGone
        }
    }

    /// What ended a wait that an interrupt descriptor can also end.
    enum WaitEnd: Equatable {
        case ready, timedOut, producerGone, interrupted
    }

    /// `wait(timeout:)`, which `interrupt` becoming readable also ends (the `AsyncSequence`'s
    /// cancellation).
    func wait(timeout: Duration, interrupt: FileDescriptor?) throws(RingError) -> WaitEnd {
        guard let epoch = try announceSleep() else { return .ready }
        let sleeping = slot.page.advanced(by: RingLayout.Slot.sleeping).assumingMemoryBound(to: UInt32.self)
        // Relaxed: statistics for observers.
        CShmAtomics_u32_store_relaxed(sleeping, 1)
        defer { CShmAtomics_u32_store_relaxed(sleeping, 0) }
        let outcome = sleeper!.sleep(
            on: view.word32(RingLayout.Wake.dataEpoch), expected: epoch, connection: connection, interrupt: interrupt,
            timeout: timeout)
        countWakes()
        switch outcome {
        case .woken: return .ready
        case .timedOut: return hasMessage ? .ready : .timedOut
        case .producerGone: return hasMessage ? .ready : .producerGone
        case .interrupted: return .interrupted
        }
    }

    /// The steps before a sleep (docs/wakeup.md, "The protocol", steps 1-4): the epoch to sleep
    /// on, or nil when a message is there (or a wake happened) and the caller should poll.
    private func announceSleep() throws(RingError) -> UInt32? {
        guard !state.pointee.closed else { throw RingError(.closed, key: key, "the consumer of \(key) is detached") }
        // A wake that ended one of this consumer's earlier waits (an armed one) is passed on
        // before anything else ("Waking many"): the other sleepers must not wait for this
        // consumer to run out of messages.
        sleeper?.reap()
        if hasMessage { return nil }
        let epochWord = view.word32(RingLayout.Wake.dataEpoch)
        // Acquire: a consumer that sees an epoch also sees the commits that came before its wake.
        // Partner: the release store of `data_epoch` in RingWriter.wakeSleepers.
        let epoch = CShmAtomics_u32_load_acquire(epochWord)
        // A wake happened since the load above: poll first (nothing was announced).
        guard announce(waitingOn: epoch, epochWord: epochWord) else { return nil }
        // Relaxed: statistics.
        let announced = slot.word(RingLayout.Slot.announced)
        CShmAtomics_u64_store_relaxed(announced, CShmAtomics_u64_load_relaxed(announced) &+ 1)
        // The Dekker pair with the producer: doorbell (store, above), then the commit word (load,
        // below). membarrier makes this thread and the producer's pass a full barrier, so the
        // producer either published before it (the look below finds the message) or reads the
        // doorbell after it (and wakes this epoch). Partner: RingWriter.wakeSleepersIfAny.
        Membarrier.fenceWithOthers()
        if hasMessage { return nil }
        makeSleeperIfNeeded()
        // Relaxed: statistics.
        let sleeps = slot.word(RingLayout.Slot.sleeps)
        CShmAtomics_u64_store_relaxed(sleeps, CShmAtomics_u64_load_relaxed(sleeps) &+ 1)
        return epoch
    }

    /// Made at the first wait (or the first look at the wake-up eventfd).
    private func makeSleeperIfNeeded() {
        guard sleeper == nil else { return }
        let doorbell = UnsafeMutableRawPointer(doorbellWord) - RingLayout.Doorbell.dataWaiting
        sleeper = Sleeper(
            key: key, doorbell: doorbell, epochWord: view.word32(RingLayout.Wake.dataEpoch),
            slotCountedWaits: slot.page.advanced(by: RingLayout.Slot.countedWaits).assumingMemoryBound(to: UInt32.self))
    }

    /// Adds the wakes the sleeper saw to the slot's `woken` (statistics, relaxed).
    private func countWakes() {
        guard let wakes = sleeper?.takeWakes(), wakes > 0 else { return }
        let woken = slot.word(RingLayout.Slot.woken)
        CShmAtomics_u64_store_relaxed(woken, CShmAtomics_u64_load_relaxed(woken) &+ wakes)
    }

    // MARK: - Event loops

    /// What `armWakeEvent()` found.
    public enum WakeEventArming: Sendable, Equatable {
        /// Nothing to read: `wakeEventDescriptor` becomes readable when the producer publishes
        /// (or goes). Return to the event loop.
        case armed
        /// A message can be polled (or a wake happened meanwhile): poll, then arm again.
        case ready
        /// The producer is gone and nothing is left to read.
        case producerGone
    }

    /// An eventfd that becomes readable when this consumer, armed by `armWakeEvent()`, is woken:
    /// for an `epoll` or io_uring loop, or SwiftNIO, that also serves other descriptors
    /// (docs/wakeup.md, "Event loops"). It is registered on this consumer's own io_uring
    /// (`io_uring_register_eventfd`) and never leaves this process. The consumer owns it: do not
    /// close it (it closes with the consumer; give a framework that takes ownership a `dup` of it);
    /// non-blocking.
    ///
    /// The contract, in a loop:
    /// 1. when it is readable, call `acknowledgeWakeEvent()` (it drains the eventfd, and passes
    ///    the wake on to the ring's other sleepers when the producer asked this consumer to);
    /// 2. poll the consumer until a poll returns 0;
    /// 3. call `armWakeEvent()`: on `.ready` go back to 2, on `.armed` return to the event loop,
    ///    on `.producerGone` stop.
    ///
    /// It can become readable without a message (a wake meant for another consumer of the ring,
    /// or the completion of an earlier request): step 2 then finds nothing, and step 3 arms again.
    ///
    /// - Throws: `.unsupported` where this consumer sleeps without io_uring
    ///   (`sleepFallbackReason` says why); `.outOfResources` when no eventfd can be made;
    ///   `.closed` after `detach()`.
    public func wakeEventDescriptor() throws(RingError) -> CInt {
        guard !state.pointee.closed else { throw closedError() }
        makeSleeperIfNeeded()
        return try sleeper!.makeEventDescriptor().rawValue
    }

    /// Step 1 of the event-loop contract (`wakeEventDescriptor()`): drains the eventfd and
    /// handles what completed, passing a wake on to the ring's other sleepers at once when the
    /// producer's single wake landed on this consumer ("Waking many" in docs/wakeup.md) — so
    /// call it first, before polling. No system call but the eventfd's `read` (and a
    /// `FUTEX_WAKE` when it passes a wake on).
    public func acknowledgeWakeEvent() {
        guard !state.pointee.closed, let sleeper, let descriptor = sleeper.eventDescriptor else { return }
        var value: UInt64 = 0
        _ = read(descriptor.rawValue, &value, 8)  // EAGAIN: already drained (by a framework)
        sleeper.reap()
        countWakes()
    }

    /// Announces that this consumer sleeps and queues its wait on its io_uring without waiting,
    /// so that `wakeEventDescriptor()` becomes readable at the next publish. Returns `.ready`
    /// instead when a message is already there. Costs what `wait(timeout:)` costs before it
    /// sleeps (a `membarrier` and an `io_uring_enter`, a few microseconds).
    ///
    /// - Throws: as `wakeEventDescriptor()`.
    public func armWakeEvent() throws(RingError) -> WakeEventArming {
        _ = try wakeEventDescriptor()
        guard let epoch = try announceSleep() else { return .ready }
        let armed = try sleeper!.arm(
            on: view.word32(RingLayout.Wake.dataEpoch), expected: epoch, connection: connection)
        countWakes()
        if armed { return .armed }
        return hasMessage ? .ready : .producerGone
    }

    /// Waits once, as `strategy` says: spins, yields or sleeps like `IdleStrategy.idle`, or, for a
    /// strategy with a `blockTimeout` whose spins and yields are used up, blocks in
    /// `wait(timeout:)`. Count the rounds as for `IdleStrategy.idle`, and set them to 0 when a
    /// poll finds messages.
    ///
    /// Returns what a blocking wait returned; `.producerGone` when the producer is gone and
    /// nothing is left to read, whatever the strategy (a strategy that does not block looks at the
    /// producer's connection about once per millisecond of idleness: a clock read every 64 rounds,
    /// and one `poll(2)` when a millisecond has passed, never one per round); nil otherwise.
    ///
    /// ```swift
    /// var rounds = 0
    /// while true {
    ///     if try consumer.poll(handle) > 0 { rounds = 0; continue }
    ///     if try consumer.idle(using: .block(), rounds: &rounds) == .producerGone { break }
    /// }
    /// ```
    @discardableResult
    public func idle(using strategy: IdleStrategy, rounds: inout Int) throws(RingError) -> WaitResult? {
        guard !state.pointee.closed else { throw closedError() }
        guard let timeout = strategy.blockTimeout(after: rounds) else {
            strategy.idle(&rounds)
            // A spin is a few tens of nanoseconds: read the clock every 64 of them. Yields and
            // sleeps are long: every round.
            if rounds & 63 == 0 || rounds > strategy.spins, producerWentDuringIdleness() { return .producerGone }
            return nil
        }
        return try wait(timeout: timeout)
    }

    /// Whether the producer is gone and nothing is left, looked at (one `poll(2)` of the
    /// rendezvous connection) at most once per millisecond.
    func producerWentDuringIdleness() -> Bool {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)  // the vDSO: no system call
        let nanoseconds = UInt64(now.tv_sec) &* 1_000_000_000 &+ UInt64(now.tv_nsec)
        guard nanoseconds &- state.pointee.livenessLookedAt >= 1_000_000 else { return false }
        state.pointee.livenessLookedAt = nanoseconds
        return !isProducerAlive && !hasMessage
    }

    /// Waits that went to sleep, and those a wake ended (the rest timed out or saw the producer go).
    public var sleeps: UInt64 { CShmAtomics_u64_load_relaxed(slot.word(RingLayout.Slot.sleeps)) }
    public var wakeUps: UInt64 { CShmAtomics_u64_load_relaxed(slot.word(RingLayout.Slot.woken)) }
    /// How many times this consumer woke the producer, asleep on a full ring because of it.
    public var producerWakes: UInt64 { state.pointee.producerWakes }
    /// Waits that announced themselves to the producer (the rest found a message at once).
    public var announcedWaits: UInt64 { CShmAtomics_u64_load_relaxed(slot.word(RingLayout.Slot.announced)) }

    /// The doorbell word and the current data epoch, for the test that plays a hostile consumer.
    package var doorbellForTests: UnsafeMutablePointer<UInt32> { doorbellWord }
    package var dataEpochForTests: UInt32 { CShmAtomics_u32_load_relaxed(view.word32(RingLayout.Wake.dataEpoch)) }

    /// Why this consumer's sleeps do not go through io_uring (nil when they do, or before the
    /// first sleep).
    public var sleepFallbackReason: String? { sleeper?.fallbackReason }

    /// Whether a poll would find something: a committed record or padding at this consumer's
    /// position, a lap (the producer's tail intent is more than a ring ahead: a lossy consumer's
    /// next poll reports the loss and resumes), or a notice from the producer.
    var hasMessage: Bool {
        // A notice (eviction, demotion) is news too: the next poll reports it.
        if slot.notice != state.pointee.noticeSeen { return true }
        let position = state.pointee.position
        if view.record(at: position, sequence: state.pointee.sequence) != .absent { return true }
        // Relaxed: a hint; the poll that follows validates what it reads.
        let intent = CShmAtomics_u64_load_relaxed(view.word(RingLayout.Producer.tailIntent))
        return intent &- position > UInt64(view.capacity)
    }

    /// Raises the doorbell to `epoch + 1` ("someone sleeps on this epoch"). Never lowers another
    /// consumer's announcement: a value ahead of `epoch + 1` is either a later epoch (then a wake
    /// happened since `epoch` was read: returns false, announcing nothing, and the caller polls)
    /// or a value no consumer could have written (ahead of the real epoch), which it overwrites,
    /// so that a stray write cannot keep sleepers from being woken for ever.
    private func announce(waitingOn epoch: UInt32, epochWord: UnsafeMutablePointer<UInt32>) -> Bool {
        let want = epoch &+ 1
        let doorbell = doorbellWord
        // Relaxed: the membarrier after the announcement orders it (see `wait`).
        var current = CShmAtomics_u32_load_relaxed(doorbell)
        while current != want {
            let behind = current == 0 || Int32(bitPattern: want &- current) > 0
            if !behind {
                // Ahead (or exactly half the epoch space away). Acquire, as the first load of
                // the epoch in `wait`.
                if CShmAtomics_u32_load_acquire(epochWord) != epoch { return false }
                // The epoch did not move, so no consumer can have announced a later one: a stray
                // value. A genuine announcement made meanwhile changes the word, and the
                // compare-and-swap below fails and looks again.
            }
            // Acq_rel (a locked instruction, a full barrier on x86 anyway): the announcement's
            // order against the re-check comes from the membarrier in `wait`, whose partner is
            // the producer's load of the doorbell in RingWriter.wakeSleepersIfAny; between
            // consumers, a failed exchange reloads `current` and looks again.
            if CShmAtomics_u32_compare_exchange_acq_rel(doorbell, &current, want) { return true }
        }
        return true
    }
}
