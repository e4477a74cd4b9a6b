/// The rendezvous wire protocol, version 2 (docs/rendezvous.md).
///
/// One request and one reply per connection, each a single `SOCK_SEQPACKET` message, little-endian,
/// fixed offsets. Everything received is untrusted: `WireReader` bounds-checks every read, and a
/// message that does not decode is a `RendezvousProtocolError`, never a crash.
package enum RendezvousProtocol {
    /// "SRV1" read as a little-endian UInt32: the first word of every message.
    package static let magic: UInt32 = 0x3156_5253
    /// The version this build speaks. Version 2 widened the reply's slot generation to 64 bits.
    package static let version: UInt16 = 2
    /// The oldest version this build can talk to (a version-1 reply is laid out differently).
    package static let minimumCompatibleVersion: UInt16 = 2
    /// No request is longer; a longer one is refused (and detected as truncated).
    package static let maximumRequestLength = 256
    /// No reply is longer.
    package static let maximumReplyLength = 1024
    /// The most descriptors one reply carries (an observer of a ring gets one per consumer slot):
    /// the kernel's SCM_MAX_FD.
    package static let maximumDescriptors = 253

    /// What a client asks for.
    package enum RequestKind: UInt16, Sendable, Equatable {
        /// Attach to a `SharedMemory` segment.
        case attachSegment = 1
        /// Attach to a ring as a consumer.
        case attachRingConsumer = 2
        /// Read-only information for `shmring stat`/`shmring shm info`.
        case observe = 3
    }

    /// What the creator serves.
    package enum SegmentKind: UInt16, Sendable, Equatable {
        case sharedMemory = 1
        case ring = 2
    }

    /// The outcome of a request.
    package enum Status: UInt16, Sendable, Equatable {
        case ok = 0
        /// The client's credentials are not allowed by the creator's access policy.
        case permissionDenied = 1
        /// The request did not decode (bad magic, short, truncated, unknown fields).
        case badRequest = 2
        /// No common protocol version.
        case unsupportedVersion = 3
        /// The creator does not serve this kind of request (a ring consumer on a shared-memory key).
        case wrongKind = 4
        /// The creator could not serve it (errno says why, e.g. EMFILE).
        case serverError = 5
        /// A read-write attach where only the creator may write.
        case readOnlySegment = 6
        /// A ring consumer, but every slot is taken.
        case noFreeSlot = 7
        /// A gating ring consumer, but the producer refuses gating consumers.
        case gatingRefused = 8
    }

    /// What each descriptor in a reply is.
    package enum DescriptorRole: UInt16, Sendable, Equatable {
        /// The data memfd, mapped read-write or read-only as granted.
        case data = 1
        /// The robust lock's memfd, mapped read-write.
        case lock = 2
        /// A ring consumer's slot page, mapped read-write by that consumer.
        case consumerSlot = 3
        /// A ring's doorbell page, mapped read-write by every consumer (the wake-up path).
        case doorbell = 4
    }

    /// Request flags.
    package struct RequestFlags: OptionSet, Sendable, Hashable {
        package let rawValue: UInt16
        package init(rawValue: UInt16) { self.rawValue = rawValue }
        /// The client wants to write.
        package static let readWrite = RequestFlags(rawValue: 1 << 0)
        /// A ring consumer that gates the producer (`.attachRingConsumer`).
        package static let gating = RequestFlags(rawValue: 1 << 1)
    }

    /// A request: 16 bytes.
    ///
    /// ```
    /// 0        4        6        8        10       12               16
    /// | magic  | version| min    | kind   | flags  | reserved (0)    |
    /// ```
    package struct Request: Equatable, Sendable {
        package var version: UInt16 = RendezvousProtocol.version
        package var minimumCompatibleVersion: UInt16 = RendezvousProtocol.minimumCompatibleVersion
        package var kind: RequestKind
        package var flags: RequestFlags

        package init(kind: RequestKind, flags: RequestFlags) {
            self.kind = kind
            self.flags = flags
        }

        package static let length = 16

        package func encoded() -> [UInt8] {
            var writer = WireWriter()
            writer.put(RendezvousProtocol.magic)
            writer.put(version)
            writer.put(minimumCompatibleVersion)
            writer.put(kind.rawValue)
            writer.put(flags.rawValue)
            writer.put(UInt32(0))
            return writer.bytes
        }

        /// Decodes a request; the version check is separate (`negotiate`), so that a client of
        /// another version gets a precise answer.
        package static func decode(_ bytes: [UInt8]) throws(RendezvousProtocolError) -> Request {
            var reader = WireReader(bytes)
            guard bytes.count == length else { throw .badLength(bytes.count, expected: length) }
            guard try reader.u32() == RendezvousProtocol.magic else { throw .badMagic }
            let version = try reader.u16()
            let minimum = try reader.u16()
            let rawKind = try reader.u16()
            let flags = RequestFlags(rawValue: try reader.u16())
            guard try reader.u32() == 0 else { throw .malformed("reserved bytes are not zero") }
            guard let kind = RequestKind(rawValue: rawKind) else { throw .malformed("unknown request kind \(rawKind)") }
            var request = Request(kind: kind, flags: flags)
            request.version = version
            request.minimumCompatibleVersion = minimum
            return request
        }
    }

    /// Whether a peer speaking `version` (and accepting down to `minimum`) can talk to this build.
    package static func isCompatible(version: UInt16, minimum: UInt16) -> Bool {
        // Each side must accept the other's version.
        version >= minimumCompatibleVersion && minimum <= RendezvousProtocol.version
    }

    /// A reply: 76 bytes and 2 bytes per descriptor role.
    ///
    /// ```
    /// 0      4       6      8       10     12      16          20         24
    /// | magic| ver   | min  | status| kind | errno | layoutVer | creatorPid|
    /// 24            28        32                      48          56          64
    /// | creatorUid  | slot    | segment id (16 bytes) | size      | mapped    |
    /// 64        66        68                    76
    /// | nDescr  | flags   | generation (64 bits) | roles (2 bytes each) ...
    /// ```
    /// `slot` and `generation` are a ring consumer's slot (0 otherwise).
    package struct Reply: Equatable, Sendable {
        package var version: UInt16 = RendezvousProtocol.version
        package var minimumCompatibleVersion: UInt16 = RendezvousProtocol.minimumCompatibleVersion
        package var status: Status
        package var segmentKind: SegmentKind
        /// An errno value explaining `serverError`, else 0.
        package var errno: Int32 = 0
        /// The layout version of the segment (for rings; 1 for shared memory).
        package var layoutVersion: UInt32 = 1
        package var creatorPID: Int32
        package var creatorUID: UInt32
        package var segmentID: SegmentID
        /// The segment's size in bytes, as requested by its creator.
        package var size: UInt64
        /// The size of the data memfd (page-rounded).
        package var mappedSize: UInt64
        /// Segment flags (`ReplyFlags`).
        package var flags: ReplyFlags = []
        /// The role of each descriptor sent with the reply, in order.
        package var roles: [DescriptorRole] = []
        /// A ring consumer's slot index and its generation.
        package var slot: UInt32 = 0
        package var generation: UInt64 = 0

        package init(
            status: Status, segmentKind: SegmentKind, creatorPID: Int32, creatorUID: UInt32,
            segmentID: SegmentID, size: UInt64, mappedSize: UInt64
        ) {
            self.status = status
            self.segmentKind = segmentKind
            self.creatorPID = creatorPID
            self.creatorUID = creatorUID
            self.segmentID = segmentID
            self.size = size
            self.mappedSize = mappedSize
        }

        package static let fixedLength = 76

        package func encoded() -> [UInt8] {
            var writer = WireWriter()
            writer.put(RendezvousProtocol.magic)
            writer.put(version)
            writer.put(minimumCompatibleVersion)
            writer.put(status.rawValue)
            writer.put(segmentKind.rawValue)
            writer.put(UInt32(bitPattern: errno))
            writer.put(layoutVersion)
            writer.put(UInt32(bitPattern: creatorPID))
            writer.put(creatorUID)
            writer.put(slot)
            writer.put(segmentID.high)
            writer.put(segmentID.low)
            writer.put(size)
            writer.put(mappedSize)
            writer.put(UInt16(roles.count))
            writer.put(flags.rawValue)
            writer.put(generation)
            for role in roles { writer.put(role.rawValue) }
            return writer.bytes
        }

        package static func decode(_ bytes: [UInt8]) throws(RendezvousProtocolError) -> Reply {
            var reader = WireReader(bytes)
            guard bytes.count >= fixedLength else { throw .badLength(bytes.count, expected: fixedLength) }
            guard try reader.u32() == RendezvousProtocol.magic else { throw .badMagic }
            let version = try reader.u16()
            let minimum = try reader.u16()
            let rawStatus = try reader.u16()
            let rawKind = try reader.u16()
            let errno = Int32(bitPattern: try reader.u32())
            let layoutVersion = try reader.u32()
            let pid = Int32(bitPattern: try reader.u32())
            let uid = try reader.u32()
            let slot = try reader.u32()
            let id = SegmentID(high: try reader.u64(), low: try reader.u64())
            let size = try reader.u64()
            let mappedSize = try reader.u64()
            let count = Int(try reader.u16())
            let flags = ReplyFlags(rawValue: try reader.u16())
            let generation = try reader.u64()
            guard let status = Status(rawValue: rawStatus) else { throw .malformed("unknown status \(rawStatus)") }
            guard let kind = SegmentKind(rawValue: rawKind) else { throw .malformed("unknown segment kind \(rawKind)") }
            guard count <= maximumDescriptors, bytes.count == fixedLength + 2 * count else {
                throw .malformed("\(count) descriptor roles in a \(bytes.count)-byte reply")
            }
            var roles: [DescriptorRole] = []
            for _ in 0..<count {
                let raw = try reader.u16()
                guard let role = DescriptorRole(rawValue: raw) else {
                    throw .malformed("unknown descriptor role \(raw)")
                }
                roles.append(role)
            }
            var reply = Reply(
                status: status, segmentKind: kind, creatorPID: pid, creatorUID: uid, segmentID: id, size: size,
                mappedSize: mappedSize)
            reply.version = version
            reply.minimumCompatibleVersion = minimum
            reply.errno = errno
            reply.layoutVersion = layoutVersion
            reply.flags = flags
            reply.roles = roles
            reply.slot = slot
            reply.generation = generation
            return reply
        }
    }

    /// Facts about the segment that travel in a reply.
    package struct ReplyFlags: OptionSet, Sendable, Hashable {
        package let rawValue: UInt16
        package init(rawValue: UInt16) { self.rawValue = rawValue }
        /// Only the creator writes; the data memfd is sealed `F_SEAL_FUTURE_WRITE`.
        package static let creatorOnlyWriters = ReplyFlags(rawValue: 1 << 0)
        /// The data descriptor sent is read-only.
        package static let readOnlyDescriptor = ReplyFlags(rawValue: 1 << 1)
    }
}

/// A random 128-bit identifier of one segment: a new creator under the same key makes a new one.
public struct SegmentID: Hashable, Sendable, CustomStringConvertible {
    public var high: UInt64
    public var low: UInt64

    public init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    /// A new random identifier (from the system's random source).
    public static func random() -> SegmentID {
        var generator = SystemRandomNumberGenerator()
        return SegmentID(high: generator.next(), low: generator.next())
    }

    /// 32 hexadecimal digits.
    public var description: String {
        func hex(_ value: UInt64) -> String {
            let digits = String(value, radix: 16)
            return String(repeating: "0", count: 16 - digits.count) + digits
        }
        return hex(high) + hex(low)
    }
}

/// A message that does not follow the protocol.
package enum RendezvousProtocolError: Error, Equatable, CustomStringConvertible {
    case badLength(Int, expected: Int)
    case badMagic
    case malformed(String)

    package var description: String {
        switch self {
        case .badLength(let length, let expected): "a \(length)-byte message where \(expected) bytes were expected"
        case .badMagic: "not a ShmRing rendezvous message (bad magic)"
        case .malformed(let what): what
        }
    }
}

/// Little-endian encoder.
package struct WireWriter {
    package private(set) var bytes: [UInt8] = []
    package init() {}
    package mutating func put<T: FixedWidthInteger & UnsignedInteger>(_ value: T) {
        withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
    }
}

/// Bounds-checked little-endian decoder over untrusted bytes.
package struct WireReader {
    private let bytes: [UInt8]
    private var offset = 0
    package init(_ bytes: [UInt8]) { self.bytes = bytes }

    private mutating func read<T: FixedWidthInteger>(_: T.Type) throws(RendezvousProtocolError) -> T {
        let size = MemoryLayout<T>.size
        guard offset <= bytes.count - size else { throw .badLength(bytes.count, expected: offset + size) }
        var value: T = 0
        for index in 0..<size { value |= T(truncatingIfNeeded: bytes[offset + index]) << (8 * index) }
        offset += size
        return value
    }

    package mutating func u16() throws(RendezvousProtocolError) -> UInt16 { try read(UInt16.self) }
    package mutating func u32() throws(RendezvousProtocolError) -> UInt32 { try read(UInt32.self) }
    package mutating func u64() throws(RendezvousProtocolError) -> UInt64 { try read(UInt64.self) }
}
