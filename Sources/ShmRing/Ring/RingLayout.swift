import CShmAtomics

/// The ring's shared-memory layout (docs/layout.md), by name.
///
/// Every value comes from `CShmRingLayout.h`, the one source of the layout: its structs (pinned
/// by `_Static_assert`s) and the enum of offsets derived from them with `offsetof`. Nothing here
/// is a number of its own, so Swift, the C twin and the header cannot drift apart.
@usableFromInline
enum RingLayout {
    @inlinable static var magic: UInt64 { CSHMRING_MAGIC }
    @inlinable static var version: UInt32 { CSHMRING_LAYOUT_VERSION }
    @inlinable static var endiannessMark: UInt32 { CSHMRING_ENDIANNESS_MARK }
    @inlinable static var cacheLine: Int { Int(CSHMRING_LINE) }
    /// Fields written by one party are grouped in 128 bytes (two lines: adjacent-line prefetch).
    @inlinable static var group: Int { Int(CSHMRING_GROUP) }
    /// The data region starts here in the header memfd.
    @inlinable static var dataOffset: Int { Int(CSHMRING_DATA_OFFSET) }
    @inlinable static var boundaryEntries: Int { Int(CSHMRING_BOUNDARY_ENTRIES) }
    @inlinable static var recordHeaderSize: Int { Int(CSHMRING_RECORD_HEADER) }
    /// Sequence numbers are 63 bits wide.
    @inlinable static var sequenceMask: UInt64 { CSHMRING_SEQUENCE_MASK }
    /// The size of a consumer slot's memfd (a page; the slot struct fits in it).
    @inlinable static var slotSize: Int { Int(CSHMRING_SLOT_PAGE) }

    /// The configuration group at offset 0: written once by the creator.
    @usableFromInline
    enum Config {
        @inlinable static var magic: Int { Int(CSHMRING_OFFSET_MAGIC) }
        @inlinable static var layoutVersion: Int { Int(CSHMRING_OFFSET_LAYOUT_VERSION) }
        @inlinable static var endianness: Int { Int(CSHMRING_OFFSET_ENDIANNESS) }
        @inlinable static var wordSize: Int { Int(CSHMRING_OFFSET_WORD_SIZE) }
        @inlinable static var cacheLineSize: Int { Int(CSHMRING_OFFSET_CACHE_LINE_SIZE) }
        @inlinable static var capacity: Int { Int(CSHMRING_OFFSET_CAPACITY) }
        @inlinable static var alignment: Int { Int(CSHMRING_OFFSET_ALIGNMENT) }
        @inlinable static var maxMessageLength: Int { Int(CSHMRING_OFFSET_MAX_MESSAGE_LENGTH) }
        @inlinable static var maxConsumers: Int { Int(CSHMRING_OFFSET_MAX_CONSUMERS) }
        @inlinable static var recordHeaderSize: Int { Int(CSHMRING_OFFSET_RECORD_HEADER_SIZE) }
        @inlinable static var dataOffset: Int { Int(CSHMRING_OFFSET_DATA_OFFSET) }
        @inlinable static var segmentIDHigh: Int { Int(CSHMRING_OFFSET_SEGMENT_ID_HIGH) }
        @inlinable static var segmentIDLow: Int { Int(CSHMRING_OFFSET_SEGMENT_ID_LOW) }
        @inlinable static var salt: Int { Int(CSHMRING_OFFSET_SALT) }
        @inlinable static var typeNameHash: Int { Int(CSHMRING_OFFSET_TYPE_NAME_HASH) }
        @inlinable static var typeSize: Int { Int(CSHMRING_OFFSET_TYPE_SIZE) }
        @inlinable static var typeStride: Int { Int(CSHMRING_OFFSET_TYPE_STRIDE) }
        @inlinable static var typeAlignment: Int { Int(CSHMRING_OFFSET_TYPE_ALIGNMENT) }
        @inlinable static var typeVersion: Int { Int(CSHMRING_OFFSET_TYPE_VERSION) }
        @inlinable static var flags: Int { Int(CSHMRING_OFFSET_FLAGS) }
        @inlinable static var producerPID: Int { Int(CSHMRING_OFFSET_PRODUCER_PID) }
    }

    /// The producer group: written by the producer only.
    @usableFromInline
    enum Producer {
        @inlinable static var tailIntent: Int { Int(CSHMRING_OFFSET_TAIL_INTENT) }
        @inlinable static var tailVersion: Int { Int(CSHMRING_OFFSET_TAIL_VERSION) }
        @inlinable static var tail: Int { Int(CSHMRING_OFFSET_TAIL) }
        @inlinable static var tailSequence: Int { Int(CSHMRING_OFFSET_TAIL_SEQUENCE) }
        @inlinable static var limit: Int { Int(CSHMRING_OFFSET_LIMIT) }
    }

    /// The wake-up group: written by the producer only, when it wakes sleepers.
    @usableFromInline
    enum Wake {
        /// The consumers' futex word (32 bits).
        @inlinable static var dataEpoch: Int { Int(CSHMRING_OFFSET_DATA_EPOCH) }
        @inlinable static var wakes: Int { Int(CSHMRING_OFFSET_WAKES) }
        /// `slot << 32 | (space_epoch + 1)` while the producer sleeps on a full ring (64 bits).
        @inlinable static var producerWaiting: Int { Int(CSHMRING_OFFSET_PRODUCER_WAITING) }
        @inlinable static var producerSleeps: Int { Int(CSHMRING_OFFSET_PRODUCER_SLEEPS) }
    }

    /// The doorbell page (a memfd of its own, writable by every consumer).
    @usableFromInline
    enum Doorbell {
        @inlinable static var magic: UInt64 { CSHMRING_DOORBELL_MAGIC }
        @inlinable static var size: Int { Int(CSHMRING_DOORBELL_PAGE) }
        @inlinable static var magicOffset: Int { Int(CSHMRING_DOORBELL_MAGIC_OFFSET) }
        /// `data_epoch + 1` of the epoch sleepers wait on (32 bits).
        @inlinable static var dataWaiting: Int { Int(CSHMRING_DOORBELL_DATA_WAITING) }
        /// How many consumers sleep (a hint, 32 bits).
        @inlinable static var sleepers: Int { Int(CSHMRING_DOORBELL_SLEEPERS) }
        /// The epoch whose wake a woken consumer passes on to every sleeper (32 bits, 0: none).
        @inlinable static var passOn: Int { Int(CSHMRING_DOORBELL_PASS_ON) }
    }

    /// The counters group: written by the producer only.
    @usableFromInline
    enum Counters {
        @inlinable static var publishedMessages: Int { Int(CSHMRING_OFFSET_PUBLISHED_MESSAGES) }
        @inlinable static var publishedBytes: Int { Int(CSHMRING_OFFSET_PUBLISHED_BYTES) }
        @inlinable static var backPressureEvents: Int { Int(CSHMRING_OFFSET_BACK_PRESSURE_EVENTS) }
        /// Gating consumers demoted to lossy by their lag limit.
        @inlinable static var demotions: Int { Int(CSHMRING_OFFSET_DEMOTIONS) }
        /// Consumers whose control page held a value that cannot be right.
        @inlinable static var evictions: Int { Int(CSHMRING_OFFSET_EVICTIONS) }
    }

    /// The boundary index: `boundaryEntries` entries of `stride` bytes from `base`, written by
    /// the producer only; field offsets within an entry.
    @usableFromInline
    enum Boundary {
        @inlinable static var base: Int { Int(CSHMRING_OFFSET_BOUNDARIES) }
        @inlinable static var stride: Int { Int(CSHMRING_BOUNDARY_STRIDE) }
        @inlinable static var version: Int { Int(CSHMRING_BOUNDARY_VERSION) }
        @inlinable static var position: Int { Int(CSHMRING_BOUNDARY_POSITION) }
        @inlinable static var sequence: Int { Int(CSHMRING_BOUNDARY_SEQUENCE) }
    }

    /// A record header in the data region, from the record's start.
    @usableFromInline
    enum Record {
        @inlinable static var commit: Int { Int(CSHMRING_RECORD_COMMIT) }
        @inlinable static var length: Int { Int(CSHMRING_RECORD_LENGTH) }
        @inlinable static var type: Int { Int(CSHMRING_RECORD_TYPE) }
    }

    /// A consumer slot page: a fresh memfd for every attachment. The consumer line and the
    /// sleeping line are written by the consumer (and nothing in them is trusted by the producer);
    /// the owner line is written by the producer (and only tells the consumer what happened).
    @usableFromInline
    enum Slot {
        @inlinable static var cursor: Int { Int(CSHMRING_SLOT_CURSOR) }
        @inlinable static var active: Int { Int(CSHMRING_SLOT_ACTIVE) }
        @inlinable static var policy: Int { Int(CSHMRING_SLOT_POLICY) }
        @inlinable static var pid: Int { Int(CSHMRING_SLOT_PID) }
        @inlinable static var delivered: Int { Int(CSHMRING_SLOT_DELIVERED) }
        @inlinable static var deliveredBytes: Int { Int(CSHMRING_SLOT_DELIVERED_BYTES) }
        @inlinable static var lappedMessages: Int { Int(CSHMRING_SLOT_LAPPED_MESSAGES) }
        @inlinable static var lappedBytes: Int { Int(CSHMRING_SLOT_LAPPED_BYTES) }
        @inlinable static var joined: Int { Int(CSHMRING_SLOT_JOINED) }
        /// What the producer's server leaves in `joined` when the join timeout passed first
        /// (never a generation: those count from 1).
        @inlinable static var joinRefused: UInt64 { .max }
        @inlinable static var lagLimitBytes: Int { Int(CSHMRING_SLOT_LAG_LIMIT_BYTES) }
        @inlinable static var lagLimitNanoseconds: Int { Int(CSHMRING_SLOT_LAG_LIMIT_NANOSECONDS) }
        @inlinable static var sleeping: Int { Int(CSHMRING_SLOT_SLEEPING) }
        /// The producer's futex word while this consumer holds it back (32 bits).
        @inlinable static var spaceEpoch: Int { Int(CSHMRING_SLOT_SPACE_EPOCH) }
        @inlinable static var sleeps: Int { Int(CSHMRING_SLOT_SLEEPS) }
        @inlinable static var woken: Int { Int(CSHMRING_SLOT_WOKEN) }
        @inlinable static var announced: Int { Int(CSHMRING_SLOT_ANNOUNCED) }
        /// Futex waits counted in the doorbell's `sleepers` and not counted out (32 bits).
        @inlinable static var countedWaits: Int { Int(CSHMRING_SLOT_COUNTED_WAITS) }
        @inlinable static var generation: Int { Int(CSHMRING_SLOT_GENERATION) }
        @inlinable static var notice: Int { Int(CSHMRING_SLOT_NOTICE) }
    }

    /// A slot's notice word: `generation << 2 | bits`, the generation of the attachment it is for
    /// (its low 62 bits) and these bits.
    @inlinable static var noticeDemoted: UInt64 { CSHMRING_NOTICE_DEMOTED }
    @inlinable static var noticeEvicted: UInt64 { CSHMRING_NOTICE_EVICTED }

    /// The generation part of a notice word.
    @inlinable @inline(__always)
    static func noticeGeneration(_ notice: UInt64) -> UInt64 { notice >> 2 }

    /// Config flag: the producer refuses gating consumers.
    @inlinable static var flagRefusesGating: UInt32 { CSHMRING_FLAG_REFUSES_GATING }

    /// The size of the header memfd for a ring of `capacity` bytes.
    @usableFromInline static func headerMemfdSize(capacity: Int) -> Int { dataOffset + capacity }

    /// `size` rounded up to a multiple of `alignment` (a power of two).
    @inlinable @inline(__always)
    static func align(_ size: Int, _ alignment: Int) -> Int { (size &+ alignment &- 1) & ~(alignment &- 1) }
}
