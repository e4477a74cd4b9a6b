import CShmAtomics

#if canImport(Glibc)
import Glibc
#endif

/// What lies at a position for a reader that expects a given sequence there (`RingView.record`).
@usableFromInline @frozen
enum RecordAt: Equatable {
    /// That record, committed: its payload length, its size in the ring, its type tag.
    case committed(length: Int, size: Int, type: UInt32)
    /// Padding for that record: the rest of the lap is empty, the record starts the next lap.
    case padding
    /// Nothing with that sequence yet (or, for a lossy reader, overwritten: its validation tells).
    case absent
    /// Committed, but it cannot be right: a length beyond the maximum or the end of the lap, or
    /// padding at a lap's start (which would send a reader round the lap for ever).
    case malformed(length: Int)
}

/// The ring's memory as seen by one process: where the header and the data are, and the
/// configuration values copied out of the (validated) header. A plain value of constants, so that
/// the hot paths read no shared word for them.
@usableFromInline @frozen
struct RingView {
    /// The header memfd's mapping (read-only for consumers).
    @usableFromInline let header: UnsafeMutableRawPointer
    /// The data region (header + 4096).
    @usableFromInline let data: UnsafeMutableRawPointer
    @usableFromInline let capacity: Int
    @usableFromInline let mask: UInt64
    @usableFromInline let alignment: Int
    @usableFromInline let maxMessageLength: Int
    @usableFromInline let salt: UInt64

    @usableFromInline
    init(header: UnsafeMutableRawPointer, capacity: Int, alignment: Int, maxMessageLength: Int, salt: UInt64) {
        self.header = header
        self.data = header + RingLayout.dataOffset
        self.capacity = capacity
        self.mask = UInt64(capacity - 1)
        self.alignment = alignment
        self.maxMessageLength = maxMessageLength
        self.salt = salt
    }

    /// Where `position` lies in the data region (the mask is below the capacity: no overflow check
    /// needed).
    @inlinable @inline(__always)
    func offset(_ position: UInt64) -> Int { Int(truncatingIfNeeded: position & mask) }

    /// A 64-bit word of the header.
    @inlinable @inline(__always)
    func word(_ offset: Int) -> UnsafeMutablePointer<UInt64> {
        (header + offset).assumingMemoryBound(to: UInt64.self)
    }

    /// A 32-bit word of the header.
    @inlinable @inline(__always)
    func word32(_ offset: Int) -> UnsafeMutablePointer<UInt32> {
        (header + offset).assumingMemoryBound(to: UInt32.self)
    }

    /// The record header at `offset` in the data region — length in the low half, type in the
    /// high half (CShmRing_header_word; the ring is little-endian, RingHeaderCheck) — read once,
    /// as the one word the producer wrote it in (relaxed: the caller's acquire load of the commit
    /// word orders it). Within the last 16 bytes of a lap only padding can start (alignment 8
    /// leaves room for its commit word alone): there the header is not read, and reads as an
    /// impossible length.
    @inlinable @inline(__always)
    func recordHeader(at offset: Int) -> UInt64 {
        guard offset &+ RingLayout.recordHeaderSize <= capacity else { return UInt64(UInt32.max) }
        return CShmAtomics_u64_load_relaxed(
            (data + (offset &+ RingLayout.Record.length)).assumingMemoryBound(to: UInt64.self))
    }

    /// Reads the record a consumer expects at `position` — the commit word once (acquire), the
    /// header once — and checks it: the one place every poll decides what it is looking at.
    @inlinable @inline(__always)
    func record(at position: UInt64, sequence: UInt64) -> RecordAt {
        let offset = self.offset(position)
        // Acquire: the record's header and payload are visible once its commit word is. Partner:
        // the producer's release store of the commit word (or of a batch's first).
        let word = CShmAtomics_u64_load_acquire((data + offset).assumingMemoryBound(to: UInt64.self))
        // What is left once this sequence's mix is taken out: the record's shape if the word is
        // its commit word, the padding shape if it is its padding (CShmRing_record_word).
        let rest = word ^ CShmRing_sequence_mix((sequence & RingLayout.sequenceMask) ^ salt)
        // The commit word must name this sequence *and* this header (CShmRing_header_shape).
        let header = recordHeader(at: offset)
        if rest == CShmRing_header_shape(header) {
            let length = Int(UInt32(truncatingIfNeeded: header))
            let size = recordSize(length)
            guard length <= maxMessageLength, offset &+ size <= capacity else { return .malformed(length: length) }
            return .committed(length: length, size: size, type: UInt32(truncatingIfNeeded: header >> 32))
        }
        guard rest == CSHMRING_PADDING_SHAPE else { return .absent }
        return offset == 0 ? .malformed(length: 0) : .padding
    }

    /// The commit word of a padding record that precedes the record with `sequence`.
    @inlinable @inline(__always)
    func paddingWord(sequence: UInt64) -> UInt64 { CShmRing_padding_word(sequence, salt) }

    /// The commit word of the record with `sequence`, `length` and `type`: the sequence mixed
    /// with the salt in all 64 bits, and the record's shape (CShmRing_record_word), so that
    /// neither an older record's word, whole or partly overwritten, nor a header that is not the
    /// record's own passes for it.
    @inlinable @inline(__always)
    func recordWord(sequence: UInt64, length: UInt32, type: UInt32) -> UInt64 {
        CShmRing_record_word(sequence, salt, length, type)
    }

    /// The size of a record with `length` payload bytes.
    @inlinable @inline(__always)
    func recordSize(_ length: Int) -> Int { RingLayout.align(RingLayout.recordHeaderSize &+ length, alignment) }

    /// Reads a (position, sequence) pair that the producer publishes under a seqlock (the tail, a
    /// boundary entry). Nil if the version stays odd (or keeps changing) for `attempts` tries: a
    /// producer that died in the middle of the update, or memory that nobody should trust. The
    /// producer holds a seqlock for a few stores; the tail gets about a million tries, boundary
    /// entries (which a reader may simply skip) far fewer.
    @usableFromInline
    func readSnapshot(version: Int, position: Int, sequence: Int, attempts: Int = 1 << 20) -> (
        position: UInt64, sequence: UInt64
    )? {
        for attempt in 0..<attempts {
            if attempt & 1023 == 1023 { sched_yield() }
            // Acquire: pairs with the producer's release store of the even version after the data.
            let before = CShmAtomics_u64_load_acquire(word(version))
            if before & 1 != 0 {
                CShmAtomics_pause()
                continue
            }
            let p = CShmAtomics_u64_load_relaxed(word(position))
            let s = CShmAtomics_u64_load_relaxed(word(sequence))
            // Acquire fence: the data loads above complete before the version is read again
            // (partner: the producer's release fence after the odd version).
            CShmAtomics_fence_acquire()
            if CShmAtomics_u64_load_relaxed(word(version)) == before { return (p, s) }
        }
        return nil
    }
}
