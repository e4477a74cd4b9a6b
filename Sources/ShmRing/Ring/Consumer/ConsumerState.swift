/// A consumer's own state, behind a pointer (no exclusivity checks on the hot path); the readers,
/// the joiner and `RingConsumer` share it, so each of them is one pointer wide.
@usableFromInline
struct ConsumerState {
    /// The ring's memory and configuration.
    @usableFromInline let view: RingView
    /// This consumer's slot page.
    @usableFromInline let slot: ConsumerSlot
    /// Publish the cursor at least this often (a quarter of the capacity), even inside one poll.
    @usableFromInline let cursorInterval: UInt64
    /// The size of the validating reader's copy buffer: a record of the largest size fits, and at
    /// least 64 KiB for batches.
    @usableFromInline let bufferSize: Int
    /// The position of the next record to read.
    @usableFromInline var position: UInt64 = 0
    /// Its sequence number.
    @usableFromInline var sequence: UInt64 = 0
    /// The cursor last stored in the slot page.
    @usableFromInline var publishedCursor: UInt64 = 0
    @usableFromInline var delivered: UInt64 = 0
    @usableFromInline var deliveredBytes: UInt64 = 0
    /// Messages and ring bytes missed because the producer lapped this consumer (in all).
    @usableFromInline var lappedMessages: UInt64 = 0
    @usableFromInline var lappedBytes: UInt64 = 0
    /// Missed right before the next message handed out (reported in its `RingRecordInfo`).
    @usableFromInline var pendingMissedMessages: UInt64 = 0
    @usableFromInline var pendingMissedBytes: UInt64 = 0
    /// Records are copied, then validated against the tail intent (lossy, or gating with a lag
    /// limit: the producer may stop waiting for it at any moment).
    @usableFromInline var validating: Bool = false
    /// The validating reader's copies (`bufferSize` bytes) and its records
    /// (`ValidatingReader.batchLimit` of them); mapped when the consumer starts validating.
    @usableFromInline var buffer: UnsafeMutableRawPointer?
    @usableFromInline var gathered: UnsafeMutablePointer<GatheredRecord>?
    /// The producer demoted this consumer to lossy (its lag limit).
    @usableFromInline var demoted: Bool = false
    /// `.demoted` was thrown (once).
    @usableFromInline var demotionReported: Bool = false
    /// The notice bits already acted on.
    @usableFromInline var noticeSeen: UInt64 = 0
    /// Polls of a gating consumer that found nothing (every 4096th looks at the producer's tail).
    @usableFromInline var emptyPolls: UInt64 = 0
    /// Polls that handed out nothing, counted by `RingConsumer.poll` for its look at the
    /// producer's connection (every 64th reads the clock).
    @usableFromInline var idlePolls: UInt64 = 0
    /// At the last lap: the tail intent minus the capacity (everything before it may have been
    /// overwritten) when the lap was found, and again once the resumption point was chosen (the
    /// producer goes on meanwhile). For tests that check where the consumer resumed.
    @usableFromInline var lastLapFloor: (found: UInt64, resumed: UInt64) = (0, 0)
    @usableFromInline var verifiedType: ObjectIdentifier?
    /// `detach()` ran: polling is `.closed` (the memory stays mapped until deinit).
    @usableFromInline var closed: Bool = false
    /// The mirrored wake-up (docs/wakeup.md): the value of the header's `producer_waiting` that
    /// means "the producer sleeps because of this consumer" (`slot << 32 | (space_epoch + 1)`),
    /// and whether this process must fence before looking at it (membarrier refused).
    @usableFromInline var spaceWaitToken: UInt64 = 0
    @usableFromInline var spaceEpoch: UInt32 = 0
    @usableFromInline var symmetricFence: Bool = false
    /// How many times this consumer woke the producer.
    @usableFromInline var producerWakes: UInt64 = 0
    /// When an idle consumer last looked at the producer's connection (CLOCK_MONOTONIC, ns).
    var livenessLookedAt: UInt64 = 0

    @usableFromInline
    init(view: RingView, slot: ConsumerSlot) {
        self.view = view
        self.slot = slot
        self.cursorInterval = UInt64(view.capacity / 4)
        self.bufferSize = max(1 << 16, RingLayout.align(view.maxMessageLength, 8))
    }
}

/// A record a validating poll has read, before validation tells whether it is intact.
@usableFromInline
struct GatheredRecord {
    @usableFromInline var position: UInt64
    @usableFromInline var sequence: UInt64
    @usableFromInline var length: Int
    @usableFromInline var type: UInt32
    /// Where its copy starts in the consumer's buffer (copying polls).
    @usableFromInline var copy: Int

    @inlinable
    init(position: UInt64, sequence: UInt64, length: Int, type: UInt32, copy: Int) {
        self.position = position
        self.sequence = sequence
        self.length = length
        self.type = type
        self.copy = copy
    }
}

/// Why a reader or the joiner stopped, in values a reader knows; `RingConsumer` turns it into a
/// `RingError` that names the key (so the hot types carry no string).
@usableFromInline
enum ReadFailure: Error {
    /// A committed record whose length cannot be right.
    case malformedRecord(length: Int, position: UInt64)
    /// A gating consumer waits for a record that the producer's tail says was committed long ago.
    case stranded(position: UInt64, sequence: UInt64, tailSequence: UInt64)
    /// Lapped this many times in a row without a message.
    case cannotKeepUp(laps: Int)
    /// The producer's tail stays mid-update.
    case tailMidUpdate
    /// The producer's tail is not a multiple of the record alignment.
    case tailMisaligned(UInt64)
    /// The join never validated.
    case joinNeverValidated
    /// The producer took the slot back before the join completed (its join timeout passed).
    case joinRefused
}

/// What a zero-copy poll of a validating consumer handed out (`RingConsumer.pollInPlace`).
public struct InPlacePollResult: Equatable, Sendable {
    /// Messages handed to the handler and consumed.
    public var handled: Int
    /// The first `torn` of them may have been overwritten while the handler read them: discard
    /// whatever was done with them. They count as missed (`RingConsumer.lappedMessages`), not as
    /// delivered.
    public var torn: Int

    public init(handled: Int, torn: Int) {
        self.handled = handled
        self.torn = torn
    }
}
