import CShmAtomics

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
    }
}
