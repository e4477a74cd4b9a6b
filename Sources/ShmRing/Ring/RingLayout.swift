/// Every offset and size of the ring's shared memory, layout version 3 (docs/layout.md).
///
/// The one place the library takes offsets from. `CShmRingLayout.h` mirrors it as C structs with
/// `_Static_assert`s, and `RingLayoutTests` compares the two field by field.
@usableFromInline
enum RingLayout {
    @usableFromInline static let magic: UInt64 = 0x3147_4e49_524d_4853  // "SHMRING1"
    @usableFromInline static let version: UInt32 = 3
    @usableFromInline static let endiannessMark: UInt32 = 0x0102_0304
    @usableFromInline static let cacheLine = 64
    /// Fields written by one party are grouped in 128 bytes (two lines: adjacent-line prefetch).
    @usableFromInline static let group = 128
    /// The data region starts here in the header memfd.
    @usableFromInline static let dataOffset = 4096
    @usableFromInline static let boundaryEntries = 16
    @usableFromInline static let recordHeaderSize = 16
    @usableFromInline static let sequenceMask: UInt64 = (1 << 63) - 1
    /// The size of a consumer slot's memfd.
    @usableFromInline static let slotSize = 4096

    /// The configuration group at offset 0: written once by the creator.
    @usableFromInline
    enum Config {
        @usableFromInline static let magic = 0
        @usableFromInline static let layoutVersion = 8
        @usableFromInline static let endianness = 12
        @usableFromInline static let wordSize = 16
        @usableFromInline static let cacheLineSize = 20
        @usableFromInline static let capacity = 24
        @usableFromInline static let alignment = 32
        @usableFromInline static let maxMessageLength = 36
        @usableFromInline static let maxConsumers = 40
        @usableFromInline static let recordHeaderSize = 44
        @usableFromInline static let dataOffset = 48
        @usableFromInline static let segmentIDHigh = 56
        @usableFromInline static let segmentIDLow = 64
        @usableFromInline static let salt = 72
        @usableFromInline static let typeNameHash = 80
        @usableFromInline static let typeSize = 88
        @usableFromInline static let typeStride = 92
        @usableFromInline static let typeAlignment = 96
        @usableFromInline static let typeVersion = 100
        @usableFromInline static let flags = 104
        @usableFromInline static let producerPID = 108
    }

    /// The producer group at offset 128: written by the producer only.
    @usableFromInline
    enum Producer {
        @usableFromInline static let base = 128
        @usableFromInline static let tailIntent = base + 0
        @usableFromInline static let tailVersion = base + 8
        @usableFromInline static let tail = base + 16
        @usableFromInline static let tailSequence = base + 24
        @usableFromInline static let limit = base + 32
        @usableFromInline static let epoch = base + 40
        @usableFromInline static let wakeWord = base + 44
    }

    /// The counters group at offset 256: written by the producer only.
    @usableFromInline
    enum Counters {
        @usableFromInline static let base = 256
        @usableFromInline static let publishedMessages = base + 0
        @usableFromInline static let publishedBytes = base + 8
        @usableFromInline static let backPressureEvents = base + 16
        /// Gating consumers demoted to lossy by their lag limit.
        @usableFromInline static let demotions = base + 24
        /// Consumers whose control page held a value that cannot be right.
        @usableFromInline static let evictions = base + 32
    }

    /// The boundary index at offset 384: 16 entries of 32 bytes, written by the producer only.
    @usableFromInline
    enum Boundary {
        @usableFromInline static let base = 384
        @usableFromInline static let stride = 32
        @usableFromInline static let version = 0
        @usableFromInline static let position = 8
        @usableFromInline static let sequence = 16
    }

    /// A record header in the data region.
    @usableFromInline
    enum Record {
        @usableFromInline static let commit = 0
        @usableFromInline static let length = 8
        @usableFromInline static let type = 12
    }

    /// A consumer slot page: a fresh memfd for every attachment. The consumer line and the
    /// sleeping line are written by the consumer (and nothing in them is trusted by the producer);
    /// the notice line is written by the producer (and only tells the consumer what happened).
    @usableFromInline
    enum Slot {
        @usableFromInline static let cursor = 0
        @usableFromInline static let active = 8
        @usableFromInline static let policy = 16
        @usableFromInline static let pid = 20
        @usableFromInline static let delivered = 24
        @usableFromInline static let deliveredBytes = 32
        @usableFromInline static let lappedMessages = 40
        @usableFromInline static let lappedBytes = 48
        @usableFromInline static let joined = 56
        @usableFromInline static let lagLimitBytes = 64
        @usableFromInline static let lagLimitNanoseconds = 72
        @usableFromInline static let sleeping = 128
        @usableFromInline static let generation = 256
        @usableFromInline static let notice = 264
    }

    /// A slot's notice word: `generation << 2 | bits`, the generation of the attachment it is for
    /// (its low 62 bits) and these bits.
    @usableFromInline static let noticeDemoted: UInt64 = 1 << 0
    @usableFromInline static let noticeEvicted: UInt64 = 1 << 1

    /// The generation part of a notice word.
    @inlinable @inline(__always)
    static func noticeGeneration(_ notice: UInt64) -> UInt64 { notice >> 2 }

    /// Config flag: the producer refuses gating consumers.
    @usableFromInline static let flagRefusesGating: UInt32 = 1 << 0

    /// The size of the header memfd for a ring of `capacity` bytes.
    @usableFromInline static func headerMemfdSize(capacity: Int) -> Int { dataOffset + capacity }

    /// `size` rounded up to a multiple of `alignment` (a power of two).
    @inlinable @inline(__always)
    static func align(_ size: Int, _ alignment: Int) -> Int { (size &+ alignment &- 1) & ~(alignment &- 1) }
}
