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
            guard now < deadline, !state.pointee.closed else { return false }
            // Acquire: pairs with SlotBoard.changeOccupancy.
            let handedOut = CShmAtomics_u32_load_acquire(slots.occupancy)
            // While enough slots are handed out but not all joined (joins take well under a
            // millisecond, but an evicted consumer may stay connected for ever), look again every
            // 2 ms; otherwise sleep until the count changes.
            let nanoseconds = min((deadline - now).clampedNanoseconds, Int(handedOut) >= count ? 2_000_000 : .max)
            var time = timespec(tv_sec: Int(nanoseconds / 1_000_000_000), tv_nsec: Int(nanoseconds % 1_000_000_000))
            _ = CShmLinux_futex_wait(slots.occupancy, handedOut, &time, true)
        }
        return true
    }

    /// Sleeps until the gating consumer furthest behind moves its cursor, or `timeout` passes:
    /// the producer's side of the mirrored wake-up (docs/wakeup.md). Call it when a publish was
    /// back-pressured, then publish again. Returns false at once when there is nothing to wait
    /// for (no gating consumer keeps the refused record out, or inside a batch); true when it
    /// slept or found the consumer had moved.
    ///
    /// The producer says which consumer and which of its epochs it sleeps on (the header's
    /// `producer_waiting`), fences (`membarrier`, so that consumers never fence on their fast
    /// path), looks at that consumer's cursor once more, and only then sleeps on the consumer's
    /// space epoch. The consumer, after storing its cursor, sees it is awaited and wakes it.
    @discardableResult
    public func waitForSpace(timeout: Duration) -> Bool {
        guard !state.pointee.closed, !state.pointee.inBatch else { return false }
        // The end of the record last refused (GatingScanner.makeRoom): sleep only while the
        // slowest consumer still keeps it out.
        let refused = state.pointee.refusedEnd
        let capacity = UInt64(view.capacity)
        guard let (slot, cursor) = GatingScanner(state: state).slowestGatingSlot(),
            Int64(bitPattern: refused &- (cursor &+ capacity)) > 0
        else { return false }
        let page = state.pointee.slots.base + slot * RingLayout.slotSize
        let epochWord = (page + RingLayout.Slot.spaceEpoch).assumingMemoryBound(to: UInt32.self)
        // Acquire: a producer that sees an epoch sees the cursor stored before it. Partner: the
        // consumer's release store of `space_epoch` in ConsumerSlot.wakeProducer (and the server
        // thread's in SlotBoard.reclaim).
        let epoch = CShmAtomics_u32_load_acquire(epochWord)
        let waitingWord = view.word(RingLayout.Wake.producerWaiting)
        // Relaxed, then the membarrier below orders it before the re-check.
        CShmAtomics_u64_store_relaxed(waitingWord, UInt64(slot) << 32 | UInt64(epoch &+ 1))
        defer { CShmAtomics_u64_store_relaxed(waitingWord, 0) }
        // The Dekker pair with the consumer: `producer_waiting` (store, above), then its cursor
        // (load, below). Partner: ConsumerSlot.wakeProducerIfWaiting (cursor, then the load of
        // `producer_waiting`, with only a compiler barrier between).
        Membarrier.fenceWithOthers()
        // Acquire: as GatingScanner.sampleSlot's load of the cursor. The re-check: is the
        // refused record still kept out?
        let now = CShmAtomics_u64_load_acquire((page + RingLayout.Slot.cursor).assumingMemoryBound(to: UInt64.self))
        guard now == cursor else { return true }
        // A consumer with a time lag limit is demoted once it has held the producer back that
        // long (GatingScanner.demoteHoldingBack): never sleep past it. (Read once; any value is
        // harmless.)
        var sleep = timeout.clampedNanoseconds
        let lagLimit = CShmAtomics_u64_load_relaxed(
            (page + RingLayout.Slot.lagLimitNanoseconds).assumingMemoryBound(to: UInt64.self))
        if lagLimit != 0 { sleep = min(sleep, Int64(clamping: max(lagLimit, 1000))) }
        state.pointee.wake.spaceSleeps &+= 1
        // Relaxed: statistics.
        CShmAtomics_u64_store_relaxed(view.word(RingLayout.Wake.producerSleeps), state.pointee.wake.spaceSleeps)
        var time = timespec(tv_sec: Int(sleep / 1_000_000_000), tv_nsec: Int(sleep % 1_000_000_000))
        // Shared (the word is in the consumer's slot memfd). A consumer that misbehaves with its
        // own word can make this sleep last until `timeout`, no longer.
        if CShmLinux_futex_wait(epochWord, epoch, &time, false) != 0 && errno == ETIMEDOUT {
            state.pointee.wake.spaceTimeouts &+= 1
        }
        return true
    }

    /// Sleeps on a full ring that ran to their timeout (the consumer never woke the producer:
    /// it read nothing meanwhile, or a wake was lost).
    public var spaceTimeouts: UInt64 { state.pointee.wake.spaceTimeouts }

    /// Times this producer slept on a full ring (`waitForSpace`).
    public var spaceSleeps: UInt64 { state.pointee.wake.spaceSleeps }

    /// Waits once after a back-pressured publish, as `strategy` says: like `IdleStrategy.idle`,
    /// or, for a strategy with a `blockTimeout` whose spins and yields are used up,
    /// `waitForSpace` (at most `atMost`). Count the rounds as for `IdleStrategy.idle`.
    public func idle(using strategy: IdleStrategy, rounds: inout Int, atMost: Duration = .seconds(3600)) {
        guard let timeout = strategy.blockTimeout(after: rounds) else {
            strategy.idle(&rounds)
            return
        }
        // Nothing to sleep on (no gating consumer to wait for, a slot changing, inside a batch):
        // a short sleep instead, never a busy loop.
        if !waitForSpace(timeout: min(timeout, atMost)) { strategy.sleep(round: 0) }
    }
}
