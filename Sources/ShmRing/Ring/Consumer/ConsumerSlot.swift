import CShmAtomics
import CShmLinux

/// A consumer's own slot page, as the consumer writes it: its cursor and counters, its
/// registration, and the producer's notices to it (docs/layout.md, "Consumer slot").
@usableFromInline @frozen
struct ConsumerSlot {
    @usableFromInline let page: UnsafeMutableRawPointer
    /// The generation the producer handed out with this attachment (notices carry it).
    @usableFromInline let generation: UInt64

    @usableFromInline
    init(page: UnsafeMutableRawPointer, generation: UInt64) {
        self.page = page
        self.generation = generation
    }

    @inlinable @inline(__always)
    func word(_ offset: Int) -> UnsafeMutablePointer<UInt64> {
        (page + offset).assumingMemoryBound(to: UInt64.self)
    }

    @inlinable @inline(__always)
    func word32(_ offset: Int) -> UnsafeMutablePointer<UInt32> {
        (page + offset).assumingMemoryBound(to: UInt32.self)
    }

    /// The notice word. Acquire: pairs with the producer's release store of the notice
    /// (GatingScanner.notify).
    @inlinable @inline(__always)
    var notice: UInt64 { CShmAtomics_u64_load_acquire(word(RingLayout.Slot.notice)) }

    /// Whether `notice` is for this attachment (a producer that raced a new hand-out of the slot
    /// could otherwise tell the wrong consumer).
    @inlinable
    func isMine(_ notice: UInt64) -> Bool {
        RingLayout.noticeGeneration(notice) == RingLayout.noticeGeneration(generation << 2)
    }

    /// Stores the cursor, and with it the counters. Inlined: a poll that hands out one message
    /// calls it every time, and five stores cost less than the call.
    @inlinable @inline(__always)
    func publishCursor(_ position: UInt64, _ state: UnsafeMutablePointer<ConsumerState>) {
        state.pointee.publishedCursor = position
        // Release: the reads of every record before `position` happen before the producer can see
        // the space free. Partner: the producer's acquire load of the cursor in
        // GatingScanner.sampleSlot.
        CShmAtomics_u64_store_release(word(RingLayout.Slot.cursor), position)
        // Relaxed: statistics.
        CShmAtomics_u64_store_relaxed(word(RingLayout.Slot.delivered), state.pointee.delivered)
        CShmAtomics_u64_store_relaxed(word(RingLayout.Slot.deliveredBytes), state.pointee.deliveredBytes)
        CShmAtomics_u64_store_relaxed(word(RingLayout.Slot.lappedMessages), state.pointee.lappedMessages)
        CShmAtomics_u64_store_relaxed(word(RingLayout.Slot.lappedBytes), state.pointee.lappedBytes)
        wakeProducerIfWaiting(state)
    }

    /// After a cursor store: wakes the producer if it sleeps on a full ring because of this
    /// consumer (docs/wakeup.md, the mirrored direction). One load and a compare otherwise.
    @inlinable @inline(__always)
    func wakeProducerIfWaiting(_ state: UnsafeMutablePointer<ConsumerState>) {
        // The Dekker pair with the producer about to sleep: cursor (store, above), then
        // `producer_waiting` (load). The producer announces itself, then calls membarrier, which
        // makes this thread pass a full barrier: only the compiler must keep the order here.
        // Partner: RingProducer.waitForSpace (announce, membarrier, re-check the cursor).
        if state.pointee.symmetricFence {
            CShmAtomics_fence_seq_cst()
        } else {
            CShmAtomics_compiler_barrier()
        }
        // Relaxed: a hint that says whether to wake; the cursor was stored with release.
        let waiting = CShmAtomics_u64_load_relaxed(state.pointee.view.word(RingLayout.Wake.producerWaiting))
        if waiting == state.pointee.spaceWaitToken { wakeProducer(state) }
    }

    /// Moves this slot's space epoch on and wakes the producer sleeping on it.
    @usableFromInline @inline(never)
    func wakeProducer(_ state: UnsafeMutablePointer<ConsumerState>) {
        let epoch = state.pointee.spaceEpoch &+ 1
        state.pointee.spaceEpoch = epoch
        state.pointee.spaceWaitToken = (state.pointee.spaceWaitToken & ~0xffff_ffff) | UInt64(epoch &+ 1)
        // Release: the producer that reads the new epoch (acquire, before it announces) also sees
        // the cursor stored before it. Partner: the acquire load in RingProducer.waitForSpace.
        CShmAtomics_u32_store_release(word32(RingLayout.Slot.spaceEpoch), epoch)
        _ = CShmLinux_futex_wake(word32(RingLayout.Slot.spaceEpoch), 1, false)
        state.pointee.producerWakes &+= 1
    }
}
