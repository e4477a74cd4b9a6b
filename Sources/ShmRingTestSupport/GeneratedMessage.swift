/// The self-checking messages that `shmring pub` and the test peer generate: a sequence number, a
/// send timestamp and a checksum, then filler derived from the sequence number.
///
/// ```
/// 0          8           16          24
/// | sequence | timestamp | checksum  | filler: byte i = sequence + i ...
/// ```
/// The checksum covers every other byte, so a torn or corrupted message cannot pass.
package enum GeneratedMessage {
    /// The smallest generated message.
    package static let minimumLength = 24

    /// Writes a message of `buffer.count` bytes (at least `minimumLength`).
    @inlinable
    package static func write(sequence: UInt64, timestamp: UInt64, into buffer: UnsafeMutableRawBufferPointer) {
        let length = buffer.count
        buffer.storeBytes(of: sequence.littleEndian, toByteOffset: 0, as: UInt64.self)
        buffer.storeBytes(of: timestamp.littleEndian, toByteOffset: 8, as: UInt64.self)
        var index = 24
        while index < length {
            buffer[index] = UInt8(truncatingIfNeeded: sequence &+ UInt64(index))
            index += 1
        }
        buffer.storeBytes(of: checksum(UnsafeRawBufferPointer(buffer)).littleEndian, toByteOffset: 16, as: UInt64.self)
    }

    /// The outcome of checking a message.
    package enum Check: Equatable {
        case valid(sequence: UInt64, timestamp: UInt64)
        case tooShort
        case badChecksum
        case badFiller
    }

    /// Checks a message: its checksum, and that its filler is the one its sequence number makes.
    @inlinable
    package static func check(_ bytes: UnsafeRawBufferPointer) -> Check {
        guard bytes.count >= minimumLength else { return .tooShort }
        let sequence = UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: 0, as: UInt64.self))
        let timestamp = UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
        let stored = UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: 16, as: UInt64.self))
        guard stored == checksum(bytes) else { return .badChecksum }
        var index = 24
        while index < bytes.count {
            if bytes[index] != UInt8(truncatingIfNeeded: sequence &+ UInt64(index)) { return .badFiller }
            index += 1
        }
        return .valid(sequence: sequence, timestamp: timestamp)
    }

    /// A 64-bit multiply-xor hash of every byte but the checksum's own (16..<24), 8 bytes at a time.
    @inlinable
    package static func checksum(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        var hash: UInt64 = 0x9e37_79b9_7f4a_7c15 ^ UInt64(bytes.count)
        @inline(__always) func mix(_ word: UInt64) {
            hash = (hash ^ word) &* 0xff51_afd7_ed55_8ccd
            hash ^= hash >> 32
        }
        mix(bytes.loadUnaligned(fromByteOffset: 0, as: UInt64.self))
        mix(bytes.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
        var offset = 24
        while offset + 8 <= bytes.count {
            mix(bytes.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
            offset += 8
        }
        var tail: UInt64 = 0
        var shift: UInt64 = 0
        while offset < bytes.count {
            tail |= UInt64(bytes[offset]) << shift
            shift += 8
            offset += 1
        }
        mix(tail)
        return hash
    }
}
