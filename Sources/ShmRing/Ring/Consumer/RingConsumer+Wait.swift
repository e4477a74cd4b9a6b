import CShmAtomics
import CShmLinux

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
        guard !state.pointee.closed else { throw RingError(.closed, key: key, "the consumer of \(key) is detached") }
        if hasMessage { return .ready }
        let epochWord = view.word32(RingLayout.Wake.dataEpoch)
        // Acquire: a consumer that sees an epoch also sees the commits that came before its wake.
        // Partner: the release store of `data_epoch` in RingWriter.wakeSleepers.
        let epoch = CShmAtomics_u32_load_acquire(epochWord)
        announce(waitingOn: epoch)
        // Relaxed: statistics.
        let announced = slot.word(RingLayout.Slot.announced)
        CShmAtomics_u64_store_relaxed(announced, CShmAtomics_u64_load_relaxed(announced) &+ 1)
        let sleeping = slot.page.advanced(by: RingLayout.Slot.sleeping).assumingMemoryBound(to: UInt32.self)
        // Relaxed: statistics for observers.
        CShmAtomics_u32_store_relaxed(sleeping, 1)
        defer { CShmAtomics_u32_store_relaxed(sleeping, 0) }
        // The Dekker pair with the producer: doorbell (store, above), then the commit word (load,
        // below). membarrier makes this thread and the producer's pass a full barrier, so the
        // producer either published before it (the look below finds the message) or reads the
        // doorbell after it (and wakes this epoch). Partner: RingWriter.wakeSleepersIfAny.
        Self.fenceWithProducer()
        if hasMessage { return .ready }
        if sleeper == nil { sleeper = Sleeper() }
        // Relaxed: statistics.
        let sleeps = slot.word(RingLayout.Slot.sleeps)
        CShmAtomics_u64_store_relaxed(sleeps, CShmAtomics_u64_load_relaxed(sleeps) &+ 1)
        let outcome = sleeper!.sleep(on: epochWord, expected: epoch, connection: connection.rawValue, timeout: timeout)
        switch outcome {
        case .woken:
            let woken = slot.word(RingLayout.Slot.woken)
            CShmAtomics_u64_store_relaxed(woken, CShmAtomics_u64_load_relaxed(woken) &+ 1)
            return .ready
        case .timedOut: return hasMessage ? .ready : .timedOut
        case .producerGone: return hasMessage ? .ready : .producerGone
        }
    }

    /// Waits that went to sleep, and those a wake ended (the rest timed out or saw the producer go).
    public var sleeps: UInt64 { CShmAtomics_u64_load_relaxed(slot.word(RingLayout.Slot.sleeps)) }
    public var wakeUps: UInt64 { CShmAtomics_u64_load_relaxed(slot.word(RingLayout.Slot.woken)) }
    /// Waits that announced themselves to the producer (the rest found a message at once).
    public var announcedWaits: UInt64 { CShmAtomics_u64_load_relaxed(slot.word(RingLayout.Slot.announced)) }

    /// The doorbell word, for the test that plays a hostile consumer.
    package var doorbellForTests: UnsafeMutablePointer<UInt32> { doorbellWord }

    /// Why this consumer's sleeps do not go through io_uring (nil when they do, or before the
    /// first sleep).
    public var sleepFallbackReason: String? { sleeper?.fallbackReason }

    /// Whether a poll would find something: a committed record or padding at this consumer's
    /// position, or a lap (the producer's tail intent is more than a ring ahead: a lossy
    /// consumer's next poll reports the loss and resumes).
    var hasMessage: Bool {
        let position = state.pointee.position
        if view.record(at: position, sequence: state.pointee.sequence) != .absent { return true }
        // Relaxed: a hint; the poll that follows validates what it reads.
        let intent = CShmAtomics_u64_load_relaxed(view.word(RingLayout.Producer.tailIntent))
        return intent &- position > UInt64(view.capacity)
    }

    /// Raises the doorbell to `epoch + 1` ("someone sleeps on this epoch"). Never lowers it below
    /// what another consumer announced for a later epoch; overwrites a value no consumer could
    /// have written (ahead of the real epoch), so that a stray write cannot keep sleepers from
    /// being woken for ever.
    private func announce(waitingOn epoch: UInt32) {
        let want = epoch &+ 1
        let doorbell = doorbellWord
        // Relaxed: the membarrier after the announcement orders it (see `wait`).
        var current = CShmAtomics_u32_load_relaxed(doorbell)
        while current != want {
            let behind = current == 0 || Int32(bitPattern: want &- current) > 0
            let bogus = Int32(bitPattern: current &- want) > 0  // ahead of an epoch not reached yet
            guard behind || bogus else { return }
            if CShmAtomics_u32_compare_exchange_acq_rel(doorbell, &current, want) { return }
        }
    }

    /// The sleeper's half of the fence: `membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED)`, or a full
    /// fence where the kernel refuses it (the producer then fences on every publish: it could not
    /// register either, or a seccomp filter refuses the call in this process only — then wakes
    /// can be missed and only the wait's timeout ends the sleep: docs/wakeup.md).
    static func fenceWithProducer() {
        if !membarrierRefused && CShmLinux_membarrier_global_expedited() == 0 { return }
        membarrierRefused = true
        CShmAtomics_fence_seq_cst()
    }

    /// membarrier failed once in this process: do not try again.
    nonisolated(unsafe) static var membarrierRefused = false
}
