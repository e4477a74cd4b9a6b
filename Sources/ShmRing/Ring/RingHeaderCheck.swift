import CShmAtomics

/// The configuration group of a ring's header, read once and checked: nothing in shared memory is
/// trusted (consumers and observers both use it).
struct RingHeaderCheck {
    var alignment: Int
    var maxMessageLength: Int
    var salt: UInt64
    var fingerprint: RingTypeFingerprint

    /// Checks the configuration group: nothing in shared memory is trusted.
    init(header: UnsafeMutableRawPointer, capacity: Int, key: String) throws(RingError) {
        func u64(_ offset: Int) -> UInt64 {
            CShmAtomics_u64_load_relaxed((header + offset).assumingMemoryBound(to: UInt64.self))
        }
        func u32(_ offset: Int) -> UInt32 {
            CShmAtomics_u32_load_relaxed((header + offset).assumingMemoryBound(to: UInt32.self))
        }
        func incompatible(_ what: String) -> RingError { RingError(.incompatibleLayout, key: key, what) }
        // Acquire: pairs with the producer's release store of the magic, written last.
        let magic = CShmAtomics_u64_load_acquire(header.assumingMemoryBound(to: UInt64.self))
        guard magic == RingLayout.magic else {
            throw incompatible("not a ShmRing ring: magic 0x\(String(magic, radix: 16))")
        }
        let version = u32(RingLayout.Config.layoutVersion)
        guard version == RingLayout.version else {
            throw incompatible("ring layout version \(version); this build reads \(RingLayout.version)")
        }
        let endianness = u32(RingLayout.Config.endianness)
        guard endianness == RingLayout.endiannessMark else {
            throw incompatible("the ring was written with another byte order (mark 0x\(String(endianness, radix: 16)))")
        }
        let wordSize = u32(RingLayout.Config.wordSize)
        guard wordSize == UInt32(MemoryLayout<Int>.size) else {
            throw incompatible(
                "the ring was written with \(wordSize)-byte words; this build uses \(MemoryLayout<Int>.size)")
        }
        func corrupted(_ what: String) -> RingError { RingError(.corrupted, key: key, "ring header: \(what)") }
        guard u64(RingLayout.Config.capacity) == UInt64(capacity) else {
            throw corrupted("capacity \(u64(RingLayout.Config.capacity)), the producer announced \(capacity)")
        }
        guard u64(RingLayout.Config.dataOffset) == UInt64(RingLayout.dataOffset),
            u32(RingLayout.Config.recordHeaderSize) == UInt32(RingLayout.recordHeaderSize)
        else { throw corrupted("data offset or record header size differ from layout 2") }
        let alignment = Int(u32(RingLayout.Config.alignment))
        guard alignment >= 8, alignment <= 4096, alignment & (alignment - 1) == 0 else {
            throw corrupted("alignment \(alignment)")
        }
        let maxLength = Int(u32(RingLayout.Config.maxMessageLength))
        guard maxLength <= capacity / 4 - RingLayout.recordHeaderSize else {
            throw corrupted("maximum message length \(maxLength) for capacity \(capacity)")
        }
        let fingerprint = RingTypeFingerprint(
            nameHash: u64(RingLayout.Config.typeNameHash), size: u32(RingLayout.Config.typeSize),
            stride: u32(RingLayout.Config.typeStride), alignment: u32(RingLayout.Config.typeAlignment),
            version: u32(RingLayout.Config.typeVersion))
        self.alignment = alignment
        self.maxMessageLength = maxLength
        self.salt = u64(RingLayout.Config.salt)
        self.fingerprint = fingerprint
    }
}
