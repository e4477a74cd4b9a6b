import CShmAtomics

/// The producer's own state, in memory that only this process sees, behind a pointer: the hot
/// path mutates it without the dynamic exclusivity checks a class's stored `var`s would cost.
@usableFromInline
struct ProducerState {
    /// The ring's memory and configuration.
    @usableFromInline let view: RingView
    /// The consumer slot pages and the producer's private record of them.
    @usableFromInline let slots: ProducerSlots
    /// Publish the shared tail at least every this many bytes (a sixteenth of the capacity).
    @usableFromInline let tailEveryBytes: UInt64
    /// log2 of a sixteenth of the capacity: a position's section of the boundary index.
    @usableFromInline let sectionShift: UInt64
    /// Where the next record goes.
    @usableFromInline var position: UInt64
    /// The next record's sequence number.
    @usableFromInline var sequence: UInt64
    /// No byte at or after this position may be written before the consumers are looked at again.
    @usableFromInline var limit: UInt64
    /// Look at the consumers again once a claim reaches this (the low watermark below `limit`).
    @usableFromInline var rescanAt: UInt64
    /// A claim is in progress, or the producer is closed (one flag, so that the hot path checks
    /// both with one branch).
    @usableFromInline var busy: Bool
    @usableFromInline var closed: Bool
    /// The tail intent last stored: the end of all space ever claimed (it never moves back).
    @usableFromInline var intent: UInt64
    /// The end of the records consumers can see (private, exact: the shared tail lags it). Nothing
    /// from here on may be overwritten on a consumer's behalf: it is this batch's or this claim's
    /// own space, whatever the consumers have read.
    @usableFromInline var visibleEnd: UInt64
    /// `published` and the position when the shared tail and counters were last published: they
    /// are published again after `tailEvery` records or `tailEveryBytes` (layout 4).
    @usableFromInline var tailPublishedCount: UInt64 = 0
    @usableFromInline var tailPublishedPosition: UInt64 = 0
    /// Inside a batch: the first commit word, written last.
    @usableFromInline var batchFirstWord: UnsafeMutablePointer<UInt64>?
    @usableFromInline var batchFirstValue: UInt64
    @usableFromInline var batchFirstSequence: UInt64 = 0
    @usableFromInline var inBatch: Bool
    /// The sixteenth of the ring the last record started in (boundary index).
    @usableFromInline var lastSection: UInt64
    @usableFromInline var tailVersion: UInt64
    @usableFromInline var published: UInt64
    @usableFromInline var publishedBytes: UInt64
    @usableFromInline var backPressureEvents: UInt64
    /// The last value type whose fingerprint matched the ring's.
    @usableFromInline var verifiedType: ObjectIdentifier?
    /// When the producer first found itself back-pressured without a publish since (monotonic
    /// nanoseconds; 0: not back-pressured). Time lag limits count from here.
    @usableFromInline var blockedSince: UInt64 = 0
    @usableFromInline var blockedSincePublished: UInt64 = 0
    /// The end of the record `makeRoom` last refused (what a producer waiting for space needs).
    @usableFromInline var refusedEnd: UInt64 = 0
    @usableFromInline var demotions: UInt64 = 0
    @usableFromInline var evictions: UInt64 = 0
    /// The wake-up path (docs/wakeup.md). `doorbell` is the doorbell page's `data_waiting`
    /// (written by consumers, trusted for nothing), `dataEpochWord` the header's `data_epoch`,
    /// `dataEpoch` this process's copy of it; `symmetricFence`: membarrier could not be registered,
    /// so the producer issues a full fence before every look at the doorbell.
    @usableFromInline var wake: WakeSide
    /// The last eviction: slot, the producer's position, the cursor, the visible end, the
    /// producer's sequence and its tail intent (for diagnostics: `lastEviction`).
    @usableFromInline var lastEviction:
        (slot: Int, position: UInt64, cursor: UInt64, tail: UInt64, sequence: UInt64, intent: UInt64) = (
            0, 0, 0, 0, 0, 0
        )
}

/// The producer's side of the wake-up path.
@usableFromInline
struct WakeSide {
    @usableFromInline let doorbell: UnsafeMutablePointer<UInt32>
    @usableFromInline let dataEpochWord: UnsafeMutablePointer<UInt32>
    @usableFromInline let symmetricFence: Bool
    @usableFromInline var dataEpoch: UInt32 = 0
    @usableFromInline var wakes: UInt64 = 0
    /// Times the producer slept on a full ring, and those sleeps that ran to their timeout.
    @usableFromInline var spaceSleeps: UInt64 = 0
    @usableFromInline var spaceTimeouts: UInt64 = 0

    init(doorbell: UnsafeMutablePointer<UInt32>, dataEpochWord: UnsafeMutablePointer<UInt32>, symmetricFence: Bool) {
        self.doorbell = doorbell
        self.dataEpochWord = dataEpochWord
        self.symmetricFence = symmetricFence
    }
}

/// One look at a consumer slot from the producer's side.
@usableFromInline
enum SlotSample {
    /// Free, lossy, demoted, evicted, or not registered: it does not hold the producer back.
    case notGating
    /// It kept changing while it was read: hold still, to be safe.
    case unstable
    /// A gating consumer's cursor, read consistently with its registration.
    case gating(generation: UInt64, cursor: UInt64)
}

/// The consumer slot pages as the producer sees them: one page every 4096 bytes from `base`,
/// written by consumers (nothing read there is trusted), and `controls`, what the producer
/// granted each slot (its own memory).
@usableFromInline @frozen
struct ProducerSlots {
    @usableFromInline let base: UnsafeMutableRawPointer
    @usableFromInline let controls: SlotControls
    @usableFromInline let count: Int

    @usableFromInline
    init(base: UnsafeMutableRawPointer, controls: SlotControls, count: Int) {
        self.base = base
        self.controls = controls
        self.count = count
    }

    /// A word of slot `index`'s page.
    @inlinable @inline(__always)
    func word(_ index: Int, _ offset: Int) -> UnsafeMutablePointer<UInt64> {
        (base + (index &* RingLayout.slotSize &+ offset)).assumingMemoryBound(to: UInt64.self)
    }
}

/// Why the writer refused a record, in values it knows; `RingProducer` turns it into a
/// `RingError` that names the key.
@usableFromInline
enum WriteRefusal: Error {
    /// A claim is outstanding, or the producer is closed.
    case busy
    /// Longer than the ring's maximum message length.
    case tooLong(Int)
}
