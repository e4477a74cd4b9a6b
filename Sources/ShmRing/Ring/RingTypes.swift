import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Why a ring operation failed.
///
/// `code` is the category, `message` says exactly what was wrong and names the key; `syscall` and
/// `errno` are set when a system call failed.
public struct RingError: Error, Equatable, Sendable, CustomStringConvertible {
    public enum Code: Sendable, Equatable, Hashable {
        /// A configuration value is out of range (capacity not a power of two, alignment, ...).
        case invalidConfiguration
        /// A message is longer than the ring's maximum message length.
        case messageTooLong
        /// A claim (or batch) while another is outstanding on this producer.
        case claimOutstanding
        /// The key does not follow `[A-Za-z0-9._-]{1,100}`.
        case keyError
        /// A live producer serves the key already.
        case alreadyExists
        /// Nobody serves the key.
        case notFound
        /// A credential check refused (either side).
        case permissionDenied
        /// Not enough memory or descriptors.
        case outOfResources
        /// The segment is not a ring of a layout this build reads (magic, version, endianness,
        /// word size), or the key serves shared memory.
        case incompatibleLayout
        /// The ring's type fingerprint does not match the type read or written.
        case typeMismatch
        /// Every consumer slot is taken.
        case tooManyConsumers
        /// The producer refuses gating consumers.
        case gatingRefused
        /// Shared memory holds a value that cannot be right (the message names it).
        case corrupted
        /// The producer or consumer was closed.
        case closed
        /// A consumer with a lag limit fell too far behind and is lossy from now on (reported once,
        /// by the first poll after the producer demoted it; the next poll goes on, lossy).
        case demoted
        /// A lossy consumer was lapped on every attempt of one poll: the producer overwrites
        /// faster than it reads. It has resumed at the oldest intact record; polling again goes
        /// on from there. The missed messages are counted (`lappedMessages`).
        case cannotKeepUp
        /// The producer evicted this consumer: its control page held a value that cannot be right
        /// (a cursor outside the ring's window). Permanent; attach again.
        case evicted
        /// The producer is gone (its rendezvous connection hung up) and this consumer has read
        /// every message it committed. Thrown by `poll` and `pollInPlace`, which look at the
        /// connection about once per millisecond of empty polls (a clock read every 64 of them,
        /// no system call per poll); `wait` and `idle` return `.producerGone` instead. Follow the
        /// next producer with `reattached(timeout:)`.
        case producerGone
        /// What was asked needs something this system does not offer (the message says what:
        /// a wake-up descriptor needs io_uring with `FUTEX_WAIT`).
        case unsupported
        /// Anything else (a protocol violation, an unexpected errno).
        case unknown
    }

    public var code: Code
    public var key: String
    public var message: String
    public var syscall: String?
    public var errno: Errno?

    public init(_ code: Code, key: String, _ message: String, syscall: String? = nil, errno: Errno? = nil) {
        self.code = code
        self.key = key
        self.message = message
        self.syscall = syscall
        self.errno = errno
    }

    /// The message, prefixed with the key unless it starts with it already.
    public var description: String { message.hasPrefix(key + " ") ? message : "\(key): \(message)" }
}

extension RingError {
    init(_ error: SystemCallError, key: String) {
        let code: Code = error.errno == .noMemory || error.errno == .tooManyOpenFiles ? .outOfResources : .unknown
        self.init(code, key: key, "\(key): \(error)", syscall: error.syscall, errno: error.errno)
    }

    init(_ error: SharedMemoryError) {
        let code: Code =
            switch error.code {
            case .permissionDenied: .permissionDenied
            case .invalidSize: .invalidConfiguration
            case .keyError: .keyError
            case .alreadyExists: .alreadyExists
            case .notFound: .notFound
            case .outOfResources: .outOfResources
            case .incompatible: .incompatibleLayout
            case .lockError, .notAttached, .alreadyAttached, .unknown: .unknown
            }
        self.init(code, key: error.key, error.message, syscall: error.syscall, errno: error.errno)
    }

    init(_ error: RendezvousError, key: String) {
        switch error {
        case .wrongKind(let kind):
            self.init(
                .incompatibleLayout, key: key,
                kind == .sharedMemory ? "\(key) is a shared-memory segment, not a ring" : "\(key) is a ring")
        case .noFreeSlot: self.init(.tooManyConsumers, key: key, "every consumer slot of \(key) is taken")
        case .gatingRefused: self.init(.gatingRefused, key: key, "the producer of \(key) refuses gating consumers")
        default:
            self.init(SharedMemoryError(error, key: key))
        }
    }

    init(_ error: SegmentError, key: String) {
        self.init(SharedMemoryError(error, key: key))
    }
}

/// What a publish did.
public enum PublishResult: Equatable, Sendable {
    /// The message is committed: consumers can see it.
    case published
    /// A gating consumer has not read far enough: nothing was written. Try again later, or use a
    /// publish with a timeout.
    case backPressured
}

/// What came of a claim (`RingProducer.claim`).
public enum ClaimResult: Equatable, Sendable {
    /// The body committed: consumers can see the record.
    case published
    /// The body aborted: nothing was published, and the space is used by the next record.
    case aborted
    /// A gating consumer has not read far enough: the body did not run.
    case backPressured
}

/// Why a claim threw: the ring refused it before the body ran, or the body threw (the record was
/// dropped). With a body that cannot throw, only `.ring` can happen.
public enum ClaimError<Failure: Error>: Error {
    /// `.messageTooLong`, `.claimOutstanding` or `.closed`: the body did not run.
    case ring(RingError)
    /// What the body threw; nothing was published.
    case body(Failure)
}

/// What a claim's body decides.
public enum ClaimDecision: Equatable, Sendable {
    /// Publish the record.
    case commit
    /// Drop it: nothing becomes visible, and the space is used by the next claim.
    case abort
}

/// What a poll handler wants next.
public enum PollAction: Equatable, Sendable {
    /// Consume this message and go on with the next.
    case `continue`
    /// Consume this message and return from `poll`.
    case stop
    /// Leave this message unconsumed (the next poll hands it again) and return from `poll`.
    case leave
}

/// Where a new consumer starts.
public enum RingStartPosition: Equatable, Sendable {
    /// At the next message published after it joined.
    case newest
    /// At the oldest record still guaranteed intact (the oldest that a gating consumer holds, or
    /// what the producer has not yet been free to overwrite).
    case oldest
}

/// How a consumer treats the producer (docs/ring.md, "Policies").
public enum ConsumerPolicy: UInt32, Equatable, Sendable {
    /// The producer never overwrites what this consumer has not read: it waits (back-pressure).
    case gating = 1
    /// The producer never waits for this consumer; when it is lapped, it learns exactly how many
    /// messages it missed and resumes at the oldest intact record.
    case lossy = 2
}

/// When a gating consumer stops gating: beyond `bytes` of lag, or once it has held the producer
/// back for `time`. The producer then demotes it to lossy, and its next poll throws `.demoted`.
public struct LagLimit: Equatable, Sendable {
    /// Demote once the consumer is at least this many bytes behind what the producer has
    /// published (1 ... capacity).
    public var bytes: Int?
    /// Demote once the consumer has kept the producer back-pressured this long without a break.
    public var time: Duration?

    public init(bytes: Int? = nil, time: Duration? = nil) {
        self.bytes = bytes
        self.time = time
    }
}

/// How a consumer attaches (`RingConsumer(key:namespace:configuration:)`).
public struct ConsumerConfiguration: Sendable, Equatable {
    /// Where it starts: the next message published (default), or the oldest still intact.
    public var start: RingStartPosition
    /// Gating (default: the producer waits for it) or lossy (the producer never does).
    public var policy: ConsumerPolicy
    /// For a gating consumer: when the producer may stop waiting for it (it is then demoted to
    /// lossy, and told). Such a consumer copies and validates what it reads, as a lossy one does.
    public var lagLimit: LagLimit?
    /// The type of the values it reads with `poll(as:)`, compared whole (name, layout, version)
    /// with the ring's at attach. Without it, `poll(as: T.self)` expects `T`'s own fingerprint
    /// (`RingTypeFingerprint(T.self)`), so a ring created with a custom name or a version needs it.
    public var valueType: RingTypeFingerprint?
    /// The users accepted as the ring's producer (default: this process's).
    public var trustedCreators: Set<uid_t>
    /// The longest the handshake with the producer may take.
    public var timeout: Duration

    public init(
        start: RingStartPosition = .newest, policy: ConsumerPolicy = .gating, lagLimit: LagLimit? = nil,
        valueType: RingTypeFingerprint? = nil, trustedCreators: Set<uid_t> = [geteuid()],
        timeout: Duration = .seconds(5)
    ) {
        self.start = start
        self.policy = policy
        self.lagLimit = lagLimit
        self.valueType = valueType
        self.trustedCreators = trustedCreators
        self.timeout = timeout
    }
}

/// Facts about one message handed to a poll handler.
public struct RingRecordInfo: Equatable, Sendable {
    /// The message's sequence number (63 bits, wrapping).
    public var sequence: UInt64
    /// The position of its record in the ring's byte stream (wrapping).
    public var position: UInt64
    /// The producer's type tag.
    public var type: UInt32
    /// Messages this consumer missed right before this one (it was lapped); 0 without a gap.
    public var missedMessages: UInt64
    /// Ring bytes (records with their headers and padding) it missed right before this one.
    public var missedBytes: UInt64

    @inlinable
    public init(sequence: UInt64, position: UInt64, type: UInt32, missedMessages: UInt64 = 0, missedBytes: UInt64 = 0) {
        self.sequence = sequence
        self.position = position
        self.type = type
        self.missedMessages = missedMessages
        self.missedBytes = missedBytes
    }
}

/// What identifies the type of the values in a typed ring: checked when a value is published or
/// read, so that a consumer built against another version of a struct is refused instead of
/// misreading bytes.
public struct RingTypeFingerprint: Equatable, Sendable, CustomStringConvertible {
    /// FNV-1a hash of the type's name.
    public var nameHash: UInt64
    public var size: UInt32
    public var stride: UInt32
    public var alignment: UInt32
    /// A version the user bumps when the type's meaning changes without its layout changing.
    public var version: UInt32

    /// The fingerprint of an untyped ring.
    public static let untyped = RingTypeFingerprint(nameHash: 0, size: 0, stride: 0, alignment: 0, version: 0)

    public init(nameHash: UInt64, size: UInt32, stride: UInt32, alignment: UInt32, version: UInt32) {
        self.nameHash = nameHash
        self.size = size
        self.stride = stride
        self.alignment = alignment
        self.version = version
    }

    /// The fingerprint of `T`, named by its fully qualified name unless `name` says otherwise.
    public init<T: BitwiseCopyable>(_ type: T.Type, name: String? = nil, version: UInt32 = 0) {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in (name ?? String(reflecting: T.self)).utf8 {
            hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3
        }
        self.init(
            nameHash: hash, size: UInt32(MemoryLayout<T>.size), stride: UInt32(MemoryLayout<T>.stride),
            alignment: UInt32(MemoryLayout<T>.alignment), version: version)
    }

    public var description: String {
        "type \(String(nameHash, radix: 16)) size \(size) stride \(stride) alignment \(alignment) version \(version)"
    }

    /// Checks that `T` has this fingerprint's layout (size, stride, alignment): the producer's
    /// check before `publish(value:)`. The name and version label the ring's type; they are
    /// compared with a consumer's at attach, or with `T`'s own when the consumer stated none.
    func checkLayout<T: BitwiseCopyable>(of _: T.Type, key: String) throws(RingError) {
        let actual = RingTypeFingerprint(T.self, version: version)
        guard actual.size == size, actual.stride == stride, actual.alignment == alignment else {
            throw RingError(
                .typeMismatch, key: key,
                "\(T.self) (size \(actual.size), stride \(actual.stride), alignment \(actual.alignment)) is not the "
                    + "ring's type (\(self))")
        }
    }

    /// A consumer's check before `poll(as: T.self)`: `T` has the ring's layout and, when the
    /// consumer stated no value type at attach, `T`'s own fingerprint (its name, version 0) is
    /// the ring's.
    func checkRead<T: BitwiseCopyable>(_: T.Type, statedAtAttach: Bool, key: String) throws(RingError) {
        try checkLayout(of: T.self, key: key)
        guard statedAtAttach || RingTypeFingerprint(T.self) == self else {
            throw RingError(
                .typeMismatch, key: key,
                "the ring carries \(self), not \(T.self)'s own fingerprint (\(RingTypeFingerprint(T.self))): state "
                    + "the ring's value type in the consumer's configuration (valueType) to read it as \(T.self)")
        }
    }
}

/// How to create a ring.
public struct RingConfiguration: Sendable, Equatable {
    /// The data region's size in bytes: a power of two, 4 KiB ... 1 TiB.
    public var capacity: Int
    /// Record alignment: a power of two, 8 ... 4096. Default 16 (chosen by benchmark); 64 suits
    /// per-message feeds of 48-byte messages and up, 128 batched feeds on rings larger than a
    /// core's L2 cache (docs/ring.md, "Record format and alignment, by measurement").
    public var alignment: Int
    /// The longest payload; default and maximum: capacity / 4 - 16.
    public var maxMessageLength: Int?
    /// Consumer slots created with the ring (one memfd each); 1 ... 1024, default 64.
    public var maxConsumers: Int
    /// Refuse gating consumers: the producer then never waits.
    public var refusesGating: Bool
    /// How long a consumer may take from its handshake reply to its join (microseconds, unless
    /// it is stopped or hangs). A slot reserved longer is taken back: the server ends that
    /// consumer's connection, and it sees the producer as gone. A joiner that dies frees its slot
    /// at once (its connection hangs up). Default 5 s; more than 0, at most an hour.
    public var joinTimeout: Duration
    /// Who may attach as a consumer (the same rules as `SharedMemory`; `writers` is ignored: only
    /// the producer writes a ring). In the ring's API "policy" alone means a consumer's policy.
    public var access: AccessPolicy
    /// The type of the values published with `publish(value:)`; `.untyped` for byte messages.
    public var fingerprint: RingTypeFingerprint
    /// The position of the first record (a multiple of `alignment`). Any value works, since
    /// positions wrap; tests use it to start near 2^64.
    public var initialPosition: UInt64
    /// The first record's sequence number (63 bits).
    public var initialSequence: UInt64

    public init(capacity: Int = 16 << 20) {
        self.capacity = capacity
        self.alignment = 16
        self.maxMessageLength = nil
        self.maxConsumers = 64
        self.joinTimeout = .seconds(5)
        self.refusesGating = false
        self.access = AccessPolicy()
        self.fingerprint = .untyped
        self.initialPosition = 0
        self.initialSequence = 0
    }
}
