import CShmAtomics
import CShmLinux

#if canImport(Glibc)
import Glibc
#endif

/// The producer's waits: for consumers to attach, and for space on a full ring (docs/wakeup.md,
/// the mirrored direction).
extension RingProducer {
    /// Waits until at least `count` consumers are attached, or `timeout` passes; true if they
    /// are. Sleeps on the rendezvous server's count of handed-out slots (woken at every attach
    /// and detach), and polls only while a join is under way (an attached consumer counts once it
    /// has joined): a few system calls per consumer, not a poll loop.
    public func waitForConsumers(_ count: Int, timeout: Duration) -> Bool {
        let deadline = ContinuousClock.now + timeout
        while activeConsumerCount < count {
            let now = ContinuousClock.now
            guard now < deadline else { return false }
            // Acquire: pairs with SlotBoard.changeOccupancy.
            let handedOut = CShmAtomics_u32_load_acquire(slots.occupancy)
            if Int(handedOut) >= count {
                // Joins in flight: they take well under a millisecond.
                usleep(100)
                continue
            }
            let nanoseconds = (deadline - now).clampedNanoseconds
            var time = timespec(tv_sec: Int(nanoseconds / 1_000_000_000), tv_nsec: Int(nanoseconds % 1_000_000_000))
            _ = CShmLinux_futex_wait(slots.occupancy, handedOut, &time, true)
        }
        return true
    }

    /// Sleeps until the gating consumer furthest behind moves its cursor, or `timeout` passes:
    /// the producer's side of the mirrored wake-up (docs/wakeup.md). Returns at once when no
    /// consumer gates. Call it when a publish was back-pressured, then publish again.
    ///
    /// The producer says which consumer and which of its epochs it sleeps on (the header's
    /// `producer_waiting`), fences (`membarrier`, so that consumers never fence on their fast
    /// path), looks at that consumer's cursor once more, and only then sleeps on the consumer's
    /// space epoch. The consumer, after storing its cursor, sees it is awaited and wakes it.
    public func waitForSpace(timeout: Duration) {
        guard !state.pointee.closed, !state.pointee.inBatch else { return }
        let scanner = GatingScanner(state: state)
        guard let (slot, cursor) = scanner.slowestGatingSlot() else { return }
        let page = state.pointee.slots.base + slot * RingLayout.slotSize
        let epochWord = (page + RingLayout.Slot.spaceEpoch).assumingMemoryBound(to: UInt32.self)
        // Acquire: a producer that sees an epoch sees the cursor stored before it. Partner: the
        // consumer's release store of `space_epoch` in ConsumerSlot.wakeProducer.
        let epoch = CShmAtomics_u32_load_acquire(epochWord)
        let waitingWord = view.word(RingLayout.Wake.producerWaiting)
        // Relaxed, then the membarrier below orders it before the re-check.
        CShmAtomics_u64_store_relaxed(waitingWord, UInt64(slot) << 32 | UInt64(epoch &+ 1))
        defer { CShmAtomics_u64_store_relaxed(waitingWord, 0) }
        // The Dekker pair with the consumer: `producer_waiting` (store, above), then its cursor
        // (load, below). Partner: ConsumerSlot.wakeProducerIfWaiting (cursor, then the load of
        // `producer_waiting`, with only a compiler barrier between).
        Membarrier.fenceWithOthers()
        // Acquire: as GatingScanner.sampleSlot's load of the cursor.
        let now = CShmAtomics_u64_load_acquire((page + RingLayout.Slot.cursor).assumingMemoryBound(to: UInt64.self))
        guard now == cursor else { return }
        state.pointee.wake.spaceSleeps &+= 1
        // Relaxed: statistics.
        CShmAtomics_u64_store_relaxed(view.word(RingLayout.Wake.producerSleeps), state.pointee.wake.spaceSleeps)
        let nanoseconds = timeout.clampedNanoseconds
        var time = timespec(tv_sec: Int(nanoseconds / 1_000_000_000), tv_nsec: Int(nanoseconds % 1_000_000_000))
        // Shared (the word is in the consumer's slot memfd). A consumer that misbehaves with its
        // own word can make this sleep last until `timeout`, no longer.
        _ = CShmLinux_futex_wait(epochWord, epoch, &time, false)
    }

    /// Times this producer slept on a full ring (`waitForSpace`).
    public var spaceSleeps: UInt64 { state.pointee.wake.spaceSleeps }

    /// Waits once after a back-pressured publish, as `strategy` says: like `IdleStrategy.idle`,
    /// or, for a strategy with a `blockTimeout` whose spins and yields are used up,
    /// `waitForSpace` (at most `atMost`). Count the rounds as for `IdleStrategy.idle`.
    public func idle(using strategy: IdleStrategy, rounds: inout Int, atMost: Duration = .seconds(3600)) {
        guard let timeout = strategy.blockTimeout, rounds >= strategy.spins &+ strategy.yields else {
            var noBlock = strategy
            noBlock.blockTimeout = nil
            noBlock.idle(&rounds)
            return
        }
        waitForSpace(timeout: min(timeout, atMost))
    }
}
