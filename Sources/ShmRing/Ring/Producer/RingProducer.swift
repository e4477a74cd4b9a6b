import CShmAtomics
import CShmLinux
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The single producer of a ring.
///
/// Created by key: it creates the ring's memory (a header memfd sealed `F_SEAL_FUTURE_WRITE`, so
/// only this process can ever write it, and one small memfd per consumer slot) and serves the key
/// so that consumers can attach (docs/ring.md). One producer per ring; not thread-safe (use it from
/// one thread at a time).
///
/// Publishing never allocates, never makes a system call and never takes a lock; a single
/// publish or claim is visible to consumers when it returns, and `batch` makes a group of them
/// visible at once.
public final class RingProducer {
    @usableFromInline let view: RingView
    @usableFromInline let state: UnsafeMutablePointer<ProducerState>
    /// The hot path.
    @usableFromInline let writer: RingWriter
    @usableFromInline let fingerprint: RingTypeFingerprint
    /// The key.
    public let key: String
    private let headerSegment: Segment
    private let doorbellSegment: Segment
    let slots: SlotBoard
    private let server: RendezvousServer
    /// The segment's random identity.
    public let segmentID: SegmentID

    /// The ring's capacity in bytes.
    public var capacity: Int { view.capacity }
    /// Wakes issued to sleeping consumers: one `FUTEX_WAKE` each, however many slept
    /// (docs/wakeup.md).
    public var wakes: UInt64 { state.pointee.wake.wakes }
    /// The doorbell as the producer sees it, for the measurement of waking many (ring-fan-out):
    /// whether a consumer announced the current epoch, how many consumers count themselves as
    /// asleep, and whether a wake is still to be passed on.
    package var doorbellForTests: (announced: Bool, sleepers: UInt32, passOnPending: Bool) {
        let doorbell = UnsafeMutableRawPointer(state.pointee.wake.doorbell) - RingLayout.Doorbell.dataWaiting
        func word(_ offset: Int) -> UInt32 {
            CShmAtomics_u32_load_relaxed((doorbell + offset).assumingMemoryBound(to: UInt32.self))
        }
        // The header's epoch, not the producer's private copy: this may be read from any thread.
        let epoch = CShmAtomics_u32_load_relaxed(state.pointee.wake.dataEpochWord)
        return (
            word(RingLayout.Doorbell.dataWaiting) == epoch &+ 1, word(RingLayout.Doorbell.sleepers),
            epoch != 0 && word(RingLayout.Doorbell.passOn) == epoch
        )
    }
    /// Whether publishing fences before it looks for sleepers (membarrier is refused here).
    public var fencesEveryPublish: Bool { state.pointee.wake.symmetricFence }
    /// Where the next record starts (unless it needs padding at the end of the lap); after a
    /// publish outside a batch, the end of the record just published.
    public var position: UInt64 { state.pointee.position }
    /// The header memfd's mapping (configuration, producer line, counters, boundary index, data
    /// at +4096) and the slot pages: for tests that inspect or rewrite them (the fuzz test's
    /// mutator, the stale-memory property test).
    package var headerForTests: UnsafeMutableRawPointer { view.header }
    package func slotPageForTests(_ index: Int) -> UnsafeMutableRawPointer {
        state.pointee.slots.base + index * RingLayout.slotSize
    }

    /// The size a message of `length` bytes takes in the ring (header, payload, padding to the
    /// alignment).
    public func recordSize(length: Int) -> Int { view.recordSize(length) }

    /// How many consumers are attached and active now (a scan of the slot pages; not for the hot
    /// path).
    public var activeConsumerCount: Int { GatingScanner(state: state).activeConsumerCount() }
    /// The longest payload.
    public var maxMessageLength: Int { view.maxMessageLength }
    /// Consumers that went without detaching — they died (or were cut off mid-join) — whose slot
    /// the producer reclaimed when their rendezvous connection hung up (docs/failure-model.md).
    /// (Relaxed: a statistic, counted on the server's thread in SlotBoard.reclaim; nothing is
    /// published through it.)
    public var consumersLost: UInt64 { CShmAtomics_u64_load_relaxed(slots.abandoned) }

    /// Consumers holding a slot now (joined, or between their handshake and their join); a
    /// consumer that detached or died no longer counts.
    public var attachedConsumers: Int { Int(server.statistics.attached) }

    /// Consumers whose slot was taken back because they had not joined within the ring's
    /// `joinTimeout` after their handshake (docs/failure-model.md, "A slot's life").
    public var joinTimeouts: UInt64 { server.statistics.settleTimeouts }

    /// Evictions so far, and what the last one saw (slot, the producer's position, the cursor, the
    /// published tail): diagnostics for the tests and the peer.
    package var evictions: UInt64 { state.pointee.evictions }
    package var lastEviction:
        (slot: Int, position: UInt64, cursor: UInt64, tail: UInt64, sequence: UInt64, intent: UInt64)
    {
        state.pointee.lastEviction
    }

    /// Creates a ring under `key` and serves it.
    ///
    /// - Throws: `RingError` with `.invalidConfiguration` (capacity not a power of two, ...),
    ///   `.keyError`, `.alreadyExists`, `.outOfResources`.
    public init(
        key: String, configuration: RingConfiguration = RingConfiguration(), namespace: KeyNamespace = .abstract
    ) throws(RingError) {
        let config = try Self.validate(configuration, key: key)
        let address: RendezvousAddress
        do {
            address = try RendezvousAddress(key: key, namespace: namespace)
        } catch {
            throw RingError(error, key: key)
        }
        let server: RendezvousServer
        do {
            server = try RendezvousServer.bind(address: address)
        } catch {
            throw RingError(error, key: key)
        }
        let header: Segment
        do {
            header = try Segment.create(
                name: "shmring-ring:\(key)", size: RingLayout.headerMemfdSize(capacity: config.capacity),
                seals: [.futureWrite], access: .readWrite)
        } catch {
            throw RingError(error, key: key)
        }
        // The doorbell: the one page every consumer may write (docs/wakeup.md).
        let doorbell: Segment
        do {
            doorbell = try Segment.create(
                name: "shmring-doorbell:\(key)", size: RingLayout.Doorbell.size, seals: [.grow, .shrink, .seal],
                access: .readWrite)
        } catch {
            throw RingError(error, key: key)
        }
        (doorbell.baseAddress! + RingLayout.Doorbell.magicOffset).storeBytes(
            of: RingLayout.Doorbell.magic, as: UInt64.self)
        let slots = try SlotBoard(key: key, count: config.maxConsumers)
        let salt = UInt64.random(in: 1...UInt64.max)
        let id = SegmentID.random()
        let view = RingView(
            header: header.baseAddress!, capacity: config.capacity, alignment: config.alignment,
            maxMessageLength: config.maxMessageLength!, salt: salt)
        self.view = view
        self.key = key
        self.headerSegment = header
        self.doorbellSegment = doorbell
        self.slots = slots
        self.server = server
        self.segmentID = id
        self.fingerprint = config.fingerprint
        let state = UnsafeMutablePointer<ProducerState>.allocate(capacity: 1)
        let start = config.initialPosition
        state.initialize(
            to: ProducerState(
                view: view, slots: ProducerSlots(base: slots.base, controls: slots.control, count: slots.count),
                tailEveryBytes: UInt64(config.capacity / 16),
                sectionShift: UInt64(config.capacity.trailingZeroBitCount - 4),
                position: start, sequence: config.initialSequence & RingLayout.sequenceMask,
                limit: start &+ UInt64(config.capacity), rescanAt: start &+ UInt64(config.capacity * 3 / 4),
                busy: false, closed: false, intent: start, visibleEnd: start,
                tailPublishedPosition: start, batchFirstWord: nil, batchFirstValue: 0, inBatch: false,
                lastSection: UInt64.max, tailVersion: 0,
                published: 0, publishedBytes: 0, backPressureEvents: 0, verifiedType: nil,
                wake: WakeSide(
                    doorbell: (doorbell.baseAddress! + RingLayout.Doorbell.dataWaiting).assumingMemoryBound(
                        to: UInt32.self),
                    dataEpochWord: view.word32(RingLayout.Wake.dataEpoch),
                    symmetricFence: !Membarrier.registered)))
        self.state = state
        self.writer = RingWriter(state: state)
        writeHeader(config, id: id)
        do {
            try server.start(
                admits: { [access = config.access] in access.admits($0) },
                handler: Self.handler(
                    key: key, slots: slots, header: header, doorbell: doorbell, capacity: config.capacity, id: id,
                    refusesGating: config.refusesGating, joinTimeout: config.joinTimeout))
        } catch {
            throw RingError(error, key: key)
        }
    }

    deinit {
        close()
        state.deallocate()
    }

    /// Stops serving the key. Attached consumers see the producer go (their rendezvous connection
    /// hangs up) and keep what they mapped; publishing afterwards is `.closed` (the slots are
    /// released, so nothing would hold the producer back from overwriting what they read). The
    /// memory is unmapped when the producer is deinitialized.
    public func close() {
        // The final tail and counters, for observers and consumers still reading.
        if !state.pointee.closed && !state.pointee.busy { writer.publishTail() }
        state.pointee.closed = true
        state.pointee.busy = true
        server.stop()
    }

    // MARK: - Configuration

    private static func validate(_ configuration: RingConfiguration, key: String) throws(RingError) -> RingConfiguration
    {
        var config = configuration
        let capacity = config.capacity
        guard capacity >= 4096, capacity <= 1 << 40, capacity & (capacity - 1) == 0 else {
            throw RingError(
                .invalidConfiguration, key: key,
                "capacity \(capacity) is not a power of two between 4096 and 2^40 bytes")
        }
        let alignment = config.alignment
        guard alignment >= 8, alignment <= 4096, alignment & (alignment - 1) == 0 else {
            throw RingError(
                .invalidConfiguration, key: key, "alignment \(alignment) is not a power of two from 8 to 4096")
        }
        let largest = min(capacity / 4 - RingLayout.recordHeaderSize, Int(Int32.max))
        let maxLength = config.maxMessageLength ?? largest
        guard maxLength >= 0, maxLength <= largest else {
            throw RingError(
                .invalidConfiguration, key: key,
                "maximum message length \(maxLength) is not within 0 ... \(largest) (capacity / 4 - 16)")
        }
        config.maxMessageLength = maxLength
        guard config.joinTimeout > .zero, config.joinTimeout <= .seconds(3600) else {
            throw RingError(
                .invalidConfiguration, key: key,
                "a join timeout of \(config.joinTimeout): more than 0 ... 1 hour allowed")
        }
        guard config.maxConsumers >= 1, config.maxConsumers <= 1024 else {
            throw RingError(
                .invalidConfiguration, key: key, "\(config.maxConsumers) consumer slots: 1 ... 1024 allowed")
        }
        guard config.initialPosition % UInt64(alignment) == 0 else {
            throw RingError(.invalidConfiguration, key: key, "initial position is not a multiple of the alignment")
        }
        return config
    }

    private func writeHeader(_ config: RingConfiguration, id: SegmentID) {
        func put64(_ offset: Int, _ value: UInt64) { view.word(offset).pointee = value }
        func put32(_ offset: Int, _ value: UInt32) { view.word32(offset).pointee = value }
        put32(RingLayout.Config.layoutVersion, RingLayout.version)
        put32(RingLayout.Config.endianness, RingLayout.endiannessMark)
        put32(RingLayout.Config.wordSize, UInt32(MemoryLayout<Int>.size))
        put32(RingLayout.Config.cacheLineSize, UInt32(RingLayout.cacheLine))
        put64(RingLayout.Config.capacity, UInt64(config.capacity))
        put32(RingLayout.Config.alignment, UInt32(config.alignment))
        put32(RingLayout.Config.maxMessageLength, UInt32(config.maxMessageLength!))
        put32(RingLayout.Config.maxConsumers, UInt32(config.maxConsumers))
        put32(RingLayout.Config.recordHeaderSize, UInt32(RingLayout.recordHeaderSize))
        put64(RingLayout.Config.dataOffset, UInt64(RingLayout.dataOffset))
        put64(RingLayout.Config.segmentIDHigh, id.high)
        put64(RingLayout.Config.segmentIDLow, id.low)
        put64(RingLayout.Config.salt, view.salt)
        put64(RingLayout.Config.typeNameHash, config.fingerprint.nameHash)
        put32(RingLayout.Config.typeSize, config.fingerprint.size)
        put32(RingLayout.Config.typeStride, config.fingerprint.stride)
        put32(RingLayout.Config.typeAlignment, config.fingerprint.alignment)
        put32(RingLayout.Config.typeVersion, config.fingerprint.version)
        put32(RingLayout.Config.flags, config.refusesGating ? RingLayout.flagRefusesGating : 0)
        put32(RingLayout.Config.producerPID, UInt32(bitPattern: getpid()))
        let s = state.pointee
        put64(RingLayout.Producer.tailIntent, s.position)
        put64(RingLayout.Producer.tail, s.position)
        put64(RingLayout.Producer.tailSequence, s.sequence)
        put64(RingLayout.Producer.limit, s.limit)
        for entry in 0..<RingLayout.boundaryEntries {
            let base = RingLayout.Boundary.base + entry * RingLayout.Boundary.stride
            put64(base + RingLayout.Boundary.position, s.position)
            put64(base + RingLayout.Boundary.sequence, s.sequence)
        }
        // The magic last, with release: whoever sees it sees a complete header. (Consumers get the
        // descriptor only after this, through the rendezvous, which orders it anyway.)
        CShmAtomics_u64_store_release(view.word(RingLayout.Config.magic), RingLayout.magic)
    }

    // MARK: - Publishing

    /// Publishes `bytes` as one message with the type tag `type`.
    ///
    /// - Returns: `.published`, visible to consumers at once; or `.backPressured` when a gating
    ///   consumer has not read far enough (nothing was written).
    /// - Throws: `.messageTooLong`, `.claimOutstanding` (inside a claim's body).
    @inlinable @inline(__always)
    @discardableResult
    public func publish(_ bytes: UnsafeRawBufferPointer, type: UInt32 = 0) throws(RingError) -> PublishResult {
        guard let record = try reserve(length: bytes.count) else { return .backPressured }
        if bytes.count > 0 {
            let payload = writer.payloadStart(record, length: bytes.count)
            payload.copyMemory(from: bytes.baseAddress.unsafelyUnwrapped, byteCount: bytes.count)
        }
        writer.commit(record: record, length: bytes.count, type: type)
        return .published
    }

    /// Publishes the bytes of an array as one message.
    @inlinable
    @discardableResult
    public func publish(_ bytes: [UInt8], type: UInt32 = 0) throws(RingError) -> PublishResult {
        let result = bytes.withUnsafeBytes { buffer in
            Result { () throws(RingError) in try publish(buffer, type: type) }
        }
        return try result.get()
    }

    /// Publishes a value of the ring's type (its fingerprint was given at creation).
    ///
    /// - Throws: `.typeMismatch` when `T`'s fingerprint is not the ring's.
    @inlinable
    @discardableResult
    public func publish<T: BitwiseCopyable>(value: T, type: UInt32 = 0) throws(RingError) -> PublishResult {
        if state.pointee.verifiedType != ObjectIdentifier(T.self) { try verify(T.self) }
        guard let record = try reserve(length: MemoryLayout<T>.size) else { return .backPressured }
        writer.payloadStart(record, length: MemoryLayout<T>.size).storeBytes(of: value, as: T.self)
        writer.commit(record: record, length: MemoryLayout<T>.size, type: type)
        return .published
    }

    /// Claims `length` bytes in the ring for `body` to fill in place (zero-copy).
    ///
    /// The claim is scoped to `body`: it cannot outlive it, and neither can the span it gets, so
    /// there is never a forgotten claim that would stall every consumer. `body` returns `.commit`
    /// to publish or `.abort` to drop the record; if it throws, the record is dropped and its error
    /// passes through (`ClaimError.body`). A claim (or publish) inside `body` is refused.
    ///
    /// `body` should write every byte of the span: it is the ring's memory as an earlier lap left
    /// it (only its last 8-byte word, when `length` is not a multiple of 8, is zeroed before `body`
    /// runs), and bytes left unwritten are published as they are. Whatever `body` writes, or
    /// leaves, no consumer mistakes it for a record (docs/ring.md, "Stale memory").
    ///
    /// - Returns: `.published`, `.aborted` (the body said so; nothing was published), or
    ///   `.backPressured` (a gating consumer has not read far enough; the body did not run).
    /// - Throws: `ClaimError.ring` with `.messageTooLong`, `.claimOutstanding` or `.closed`
    ///   (the body did not run); `ClaimError.body` with what the body threw.
    @inlinable
    @discardableResult
    public func claim<Failure: Error>(
        length: Int, type: UInt32 = 0, _ body: (inout MutableRawSpan) throws(Failure) -> ClaimDecision
    ) throws(ClaimError<Failure>) -> ClaimResult {
        let reserved: UInt64?
        do {
            reserved = try reserve(length: length)
        } catch {
            throw .ring(error)
        }
        guard let record = reserved else { return .backPressured }
        state.pointee.busy = true
        defer { state.pointee.busy = state.pointee.closed }
        var span = MutableRawSpan(
            _unsafeBytes: UnsafeMutableRawBufferPointer(
                start: writer.payloadStart(record, length: length), count: length))
        let decision: ClaimDecision
        do {
            decision = try body(&span)
        } catch {
            writer.abandon(record: record)
            throw .body(error)
        }
        guard decision == .commit else {
            writer.abandon(record: record)
            return .aborted
        }
        writer.commit(record: record, length: length, type: type)
        return .published
    }

    /// Publishes with back-pressure handled by waiting, at most `timeout`, in the manner of
    /// `idle` (by default: spinning, then yielding, then sleeping from 50 µs up to 1 ms;
    /// `.block()`: sleeping until the consumer holding the producer back reads on).
    ///
    /// - Returns: `.published`, or `.backPressured` if the time ran out.
    @discardableResult
    public func publish(
        _ bytes: UnsafeRawBufferPointer, type: UInt32 = 0, timeout: Duration, idle: IdleStrategy = .backoff
    ) throws(RingError) -> PublishResult {
        guard !state.pointee.inBatch else {
            // Consumers cannot pass the batch's first record until the batch ends: waiting for
            // them inside a batch would never end.
            throw RingError(.claimOutstanding, key: key, "a publish that waits is not allowed inside a batch")
        }
        let deadline = ContinuousClock.now + timeout
        var rounds = 0
        while true {
            if try publish(bytes, type: type) == .published { return .published }
            let now = ContinuousClock.now
            if now >= deadline { return .backPressured }
            self.idle(using: idle, rounds: &rounds, atMost: deadline - now)
        }
    }

    /// Runs `body` as one batch: every message it publishes becomes visible at the same moment,
    /// when `body` returns (or throws: what it published is published). Inside, publish and claim
    /// do not wait; a back-pressured one returns `.backPressured`.
    @inlinable
    public func batch<R>(_ body: (RingProducer) throws -> R) throws -> R {
        guard !state.pointee.inBatch, !state.pointee.busy else {
            if state.pointee.closed { throw busyError() }
            throw RingError(.claimOutstanding, key: key, "a batch inside a claim or a batch")
        }
        state.pointee.inBatch = true
        defer { writer.endBatch() }
        return try body(self)
    }

    /// The writer's reserve, its refusal as a `RingError` that names the key.
    @inlinable @inline(__always)
    func reserve(length: Int) throws(RingError) -> UInt64? {
        do {
            return try writer.reserve(length: length)
        } catch {
            switch error {
            case .busy: throw busyError()
            case .tooLong(let length): throw tooLong(length)
            }
        }
    }

    @usableFromInline
    func busyError() -> RingError {
        if state.pointee.closed { return RingError(.closed, key: key, "the producer of \(key) is closed") }
        return RingError(.claimOutstanding, key: key, "a claim is outstanding: publish or claim only after it returns")
    }

    @usableFromInline
    func tooLong(_ length: Int) -> RingError {
        RingError(
            .messageTooLong, key: key, "a \(length)-byte message is longer than the maximum of \(view.maxMessageLength)"
        )
    }

    @usableFromInline
    func verify<T: BitwiseCopyable>(_: T.Type) throws(RingError) {
        try fingerprint.checkLayout(of: T.self, key: key)
        state.pointee.verifiedType = ObjectIdentifier(T.self)
    }

}
