import CShmAtomics
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The producer's own state, in memory that only this process sees, behind a pointer: the hot
/// path mutates it without the dynamic exclusivity checks a class's stored `var`s would cost.
@usableFromInline
struct ProducerState {
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
    /// The tail last published: nothing from here on may be overwritten (it is this batch's or
    /// this claim's own space), whatever the consumers have read.
    @usableFromInline var publishedTail: UInt64
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
    @usableFromInline var demotions: UInt64 = 0
    @usableFromInline var evictions: UInt64 = 0
    /// The last eviction: slot, the producer's position, the cursor, the published tail (for
    /// diagnostics: `lastEviction`).
    @usableFromInline var lastEviction:
        (slot: Int, position: UInt64, cursor: UInt64, tail: UInt64, sequence: UInt64, intent: UInt64) = (
            0, 0, 0, 0, 0, 0
        )
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
    /// The consumer slot pages, one every 4096 bytes (read when the producer looks at the gating
    /// minimum; written by consumers, so nothing read there is trusted).
    @usableFromInline let slotBase: UnsafeMutableRawPointer
    /// What the producer granted each slot (its own memory).
    @usableFromInline let slotControls: SlotControls
    @usableFromInline let slotCount: Int
    @usableFromInline let fingerprint: RingTypeFingerprint
    /// The key.
    public let key: String
    private let headerSegment: Segment
    private let slots: SlotBoard
    private let server: RendezvousServer
    /// The segment's random identity.
    public let segmentID: SegmentID

    /// The ring's capacity in bytes.
    public var capacity: Int { view.capacity }
    /// Where the next record starts (unless it needs padding at the end of the lap); after a
    /// publish outside a batch, the end of the record just published.
    public var position: UInt64 { state.pointee.position }
    /// The header memfd's mapping (configuration, producer line, counters, boundary index, data
    /// at +4096) and the slot pages: for tests that inspect or rewrite them (the fuzz test's
    /// mutator, the stale-memory property test).
    package var headerForTests: UnsafeMutableRawPointer { view.header }
    package func slotPageForTests(_ index: Int) -> UnsafeMutableRawPointer {
        slotBase + index * RingLayout.slotSize
    }

    /// The size a message of `length` bytes takes in the ring (header, payload, padding to the
    /// alignment).
    public func recordSize(length: Int) -> Int { view.recordSize(length) }

    /// How many consumers are attached and active now (a scan of the slot pages; not for the hot
    /// path).
    public var activeConsumerCount: Int {
        var count = 0
        for index in 0..<slotCount {
            // Acquire: pairs with the consumer's seq_cst store of `active`, then with the server's
            // release store of the generation (sampleSlot explains the order).
            let active = CShmAtomics_u64_load_acquire(slotWord(index, RingLayout.Slot.active))
            let generation = CShmAtomics_u64_load_acquire(slotControls.generation(index))
            if generation != 0 && active == generation
                && CShmAtomics_u64_load_relaxed(slotControls.evicted(index)) != generation
            {
                count += 1
            }
        }
        return count
    }
    /// The longest payload.
    public var maxMessageLength: Int { view.maxMessageLength }
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
        let slots = try SlotBoard(key: key, count: config.maxConsumers)
        let salt = UInt64.random(in: 1...UInt64.max)
        let id = SegmentID.random()
        view = RingView(
            header: header.baseAddress!, capacity: config.capacity, alignment: config.alignment,
            maxMessageLength: config.maxMessageLength!, salt: salt)
        self.key = key
        self.headerSegment = header
        self.slots = slots
        self.server = server
        self.segmentID = id
        self.fingerprint = config.fingerprint
        slotCount = slots.count
        slotBase = slots.base
        slotControls = slots.control
        state = .allocate(capacity: 1)
        let start = config.initialPosition
        state.initialize(
            to: ProducerState(
                position: start, sequence: config.initialSequence & RingLayout.sequenceMask,
                limit: start &+ UInt64(config.capacity), rescanAt: start &+ UInt64(config.capacity * 3 / 4),
                busy: false, closed: false, intent: start, publishedTail: start,
                batchFirstWord: nil, batchFirstValue: 0, inBatch: false, lastSection: UInt64.max, tailVersion: 0,
                published: 0, publishedBytes: 0, backPressureEvents: 0, verifiedType: nil))
        writeHeader(config, id: id)
        do {
            try server.start(
                admits: { [access = config.access] in access.admits($0) },
                handler: Self.handler(
                    key: key, slots: slots, header: header, capacity: config.capacity, id: id,
                    refusesGating: config.refusesGating))
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
            let payload = payloadStart(record, length: bytes.count)
            payload.copyMemory(from: bytes.baseAddress.unsafelyUnwrapped, byteCount: bytes.count)
        }
        commit(record: record, length: bytes.count, type: type)
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
        payloadStart(record, length: MemoryLayout<T>.size).storeBytes(of: value, as: T.self)
        commit(record: record, length: MemoryLayout<T>.size, type: type)
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
            _unsafeBytes: UnsafeMutableRawBufferPointer(start: payloadStart(record, length: length), count: length))
        let decision: ClaimDecision
        do {
            decision = try body(&span)
        } catch {
            abandon(record: record)
            throw .body(error)
        }
        guard decision == .commit else {
            abandon(record: record)
            return .aborted
        }
        commit(record: record, length: length, type: type)
        return .published
    }

    /// Publishes with back-pressure handled by waiting, at most `timeout`, in the manner of
    /// `idle` (by default: spinning, then yielding, then sleeping from 50 µs up to 1 ms; the
    /// efficient sleep comes with the wake-up path).
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
            if ContinuousClock.now >= deadline { return .backPressured }
            idle.idle(&rounds)
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
        defer { endBatch() }
        return try body(self)
    }

    // MARK: - The hot path

    /// Makes room for a record of `length` payload bytes and returns its position, or nil when
    /// back-pressured. Writes the padding record when the record does not fit before the end.
    @inlinable @inline(__always)
    func reserve(length: Int) throws(RingError) -> UInt64? {
        guard !state.pointee.busy else { throw busyError() }
        guard length >= 0, length <= view.maxMessageLength else { throw tooLong(length) }
        let size = view.recordSize(length)
        var position = state.pointee.position
        // Wrapping arithmetic: every value here is bounded by the capacity (length was checked).
        let room = view.capacity &- Int(position & view.mask)
        let padding = size > room ? room : 0
        let end = position &+ UInt64(truncatingIfNeeded: padding &+ size)
        // Wrapping comparison: `end` is past `rescanAt` when their difference is "positive".
        if Int64(bitPattern: end &- state.pointee.rescanAt) > 0 {
            if !makeRoom(until: end) { return nil }
        }
        // Lap detection (the lossy reader's half is RingConsumer.gather): the tail intent moves
        // before any byte of the claimed space is written, and never backwards (after an abort the
        // space is reused, but what the aborted claim wrote may already have torn old records).
        // Relaxed store, then a release fence: every later store (padding, header, payload,
        // commit word) is ordered after it, so a reader that copied any of them and then runs an
        // acquire fence reads this value or a newer one. (On x86-64 the fence is a compiler
        // barrier: no instruction.)
        if Int64(bitPattern: end &- state.pointee.intent) > 0 {
            state.pointee.intent = end
            CShmAtomics_u64_store_relaxed(view.word(RingLayout.Producer.tailIntent), end)
            CShmAtomics_fence_release()
        }
        if padding > 0 {
            // The rest of the lap is empty: a padding record with the next record's sequence.
            // Relaxed: a consumer that sees it early only moves to the lap's start and waits there.
            let word = (view.data + Int(position & view.mask)).assumingMemoryBound(to: UInt64.self)
            CShmAtomics_u64_store_relaxed(word, view.paddingWord(sequence: state.pointee.sequence))
            position &+= UInt64(padding)
            state.pointee.position = position
        }
        return position
    }

    /// Where the payload of the record reserved at `position` starts. When `length` is not a
    /// multiple of 8, first zeroes the 8-byte word that will hold the payload's last bytes, with
    /// one whole-word store: the payload is then written over it byte-wise (a copy, a typed
    /// store, a claim's body) and must not leave the high bytes of an earlier lap's word behind.
    /// (That word may have been an older record's commit word: half-overwritten, with the older
    /// header behind it, it once passed for a later record's — docs/ring.md, "Stale memory".)
    @inlinable @inline(__always)
    func payloadStart(_ position: UInt64, length: Int) -> UnsafeMutableRawPointer {
        let payload = view.data + (Int(position & view.mask) &+ RingLayout.recordHeaderSize)
        if length & 7 != 0 {
            // Relaxed atomic: one whole 8-byte store that the compiler can neither split nor
            // merge with the copy that follows; it is published with the record (the commit's
            // release). The word lies inside the record (records are padded to 8 bytes at least).
            CShmAtomics_u64_store_relaxed((payload + (length & ~7)).assumingMemoryBound(to: UInt64.self), 0)
        }
        return payload
    }

    /// Writes the record's header and commits it (or defers the commit inside a batch).
    @inlinable @inline(__always)
    func commit(record position: UInt64, length: Int, type: UInt32) {
        let base = view.data + Int(position & view.mask)
        // Length and type as one whole word (length at +8, type at +12, as readers load them).
        // Relaxed: published by the commit word's release store (or the batch's first).
        var header: UInt64 = 0
        withUnsafeMutableBytes(of: &header) { bytes in
            bytes.storeBytes(of: UInt32(truncatingIfNeeded: length), as: UInt32.self)
            bytes.storeBytes(of: type, toByteOffset: 4, as: UInt32.self)
        }
        CShmAtomics_u64_store_relaxed((base + RingLayout.Record.length).assumingMemoryBound(to: UInt64.self), header)
        let sequence = state.pointee.sequence
        let word = base.assumingMemoryBound(to: UInt64.self)
        let value = view.recordWord(sequence: sequence, length: UInt32(truncatingIfNeeded: length), type: type)
        if state.pointee.inBatch {
            if state.pointee.batchFirstWord == nil {
                state.pointee.batchFirstWord = word
                state.pointee.batchFirstValue = value
                state.pointee.batchFirstSequence = sequence
            } else {
                // Relaxed: made visible by the release store of the batch's first commit word.
                CShmAtomics_u64_store_relaxed(word, value)
            }
        } else {
            // Release: the header and payload stores above become visible no later than the
            // commit word. Partner: the consumer's acquire load of the commit word in `poll`.
            CShmAtomics_u64_store_release(word, value)
        }
        let size = UInt64(view.recordSize(length))
        let section = position >> UInt64(sectionShift)
        // Boundary entries only for records already visible: inside a batch, only its first
        // record's, written when the batch ends (a joiner must not start inside a batch).
        if section != state.pointee.lastSection && !state.pointee.inBatch {
            recordBoundary(position: position, sequence: sequence, section: section)
        }
        state.pointee.position = position &+ size
        state.pointee.sequence = (sequence &+ 1) & RingLayout.sequenceMask
        state.pointee.published &+= 1
        state.pointee.publishedBytes &+= UInt64(length)
        if !state.pointee.inBatch { publishTail() }
    }

    /// log2 of a sixteenth of the capacity.
    @inlinable var sectionShift: Int { view.capacity.trailingZeroBitCount - 4 }

    /// Publishes the tail and the counters (once per commit, or once per batch).
    @inlinable @inline(__always)
    func publishTail() {
        state.pointee.publishedTail = state.pointee.position
        let version = state.pointee.tailVersion &+ 2
        state.pointee.tailVersion = version
        // Seqlock: odd version, release fence (orders it before the data), data, even version
        // with release. Partner: RingView.readSnapshot.
        CShmAtomics_u64_store_relaxed(view.word(RingLayout.Producer.tailVersion), version &- 1)
        CShmAtomics_fence_release()
        CShmAtomics_u64_store_relaxed(view.word(RingLayout.Producer.tail), state.pointee.position)
        CShmAtomics_u64_store_relaxed(view.word(RingLayout.Producer.tailSequence), state.pointee.sequence)
        CShmAtomics_u64_store_release(view.word(RingLayout.Producer.tailVersion), version)
        // Relaxed: statistics, read by `stat` without ordering needs.
        CShmAtomics_u64_store_relaxed(view.word(RingLayout.Counters.publishedMessages), state.pointee.published)
        CShmAtomics_u64_store_relaxed(view.word(RingLayout.Counters.publishedBytes), state.pointee.publishedBytes)
    }

    /// Drops a reserved record: nothing was written to its commit word, and the next record reuses
    /// its space. (A padding record written for it stays: it is valid for the next record too.)
    @inlinable
    func abandon(record position: UInt64) {
        state.pointee.position = position
        // A padding record may have moved the position to the next lap: publish it, so that the
        // tail (what joiners start from) and the position stay one.
        if !state.pointee.inBatch && position != state.pointee.publishedTail { publishTail() }
    }

    // MARK: - Off the hot path

    @usableFromInline
    func endBatch() {
        state.pointee.inBatch = false
        if let first = state.pointee.batchFirstWord {
            // Release: every record of the batch (headers, payloads, relaxed commit words) becomes
            // visible no later than this. Partner: the consumer's acquire load in `poll`.
            CShmAtomics_u64_store_release(first, state.pointee.batchFirstValue)
            state.pointee.batchFirstWord = nil
            // The batch's first record as a boundary entry, now that it is visible. It starts at
            // the old tail, or at the next lap's start if a padding record came first.
            var start = state.pointee.publishedTail
            let offset = UInt64(UInt(bitPattern: first) &- UInt(bitPattern: view.data))
            if offset != start & view.mask { start = (start | view.mask) &+ 1 }
            let section = start >> UInt64(sectionShift)
            if section != state.pointee.lastSection {
                recordBoundary(
                    position: start, sequence: state.pointee.batchFirstSequence,
                    section: section)
            }
        }
        publishTail()
    }

    /// Records where the first record of a new sixteenth of the ring starts (for `.oldest` joins
    /// and lossy readers' resumption).
    @usableFromInline
    func recordBoundary(position: UInt64, sequence: UInt64, section: UInt64) {
        state.pointee.lastSection = section
        let base = RingLayout.Boundary.base + Int(section & 15) * RingLayout.Boundary.stride
        let versionWord = view.word(base + RingLayout.Boundary.version)
        let version = CShmAtomics_u64_load_relaxed(versionWord) | 1
        // Seqlock, as in publishTail. Partner: RingView.readSnapshot.
        CShmAtomics_u64_store_relaxed(versionWord, version)
        CShmAtomics_fence_release()
        CShmAtomics_u64_store_relaxed(view.word(base + RingLayout.Boundary.position), position)
        CShmAtomics_u64_store_relaxed(view.word(base + RingLayout.Boundary.sequence), sequence)
        CShmAtomics_u64_store_release(versionWord, version &+ 1)
    }

    /// Looks at the gating consumers again, publishes the new limit, and tells whether a record
    /// ending at `end` now fits. Runs at the low watermark (a quarter of the capacity before the
    /// limit), not only when the ring is full. When the record does not fit, consumers whose lag
    /// limit is exceeded are demoted and the consumers are looked at once more.
    @usableFromInline
    func makeRoom(until end: UInt64) -> Bool {
        if publishLimit(until: end) || (demoteHoldingBack(end: end) && publishLimit(until: end)) {
            state.pointee.blockedSince = 0
            return true
        }
        state.pointee.backPressureEvents &+= 1
        CShmAtomics_u64_store_relaxed(
            view.word(RingLayout.Counters.backPressureEvents), state.pointee.backPressureEvents)
        return false
    }

    /// Computes and publishes the limit (the Dekker half of the join handshake) and the next
    /// rescan point; true when a record ending at `end` fits under the limit.
    @usableFromInline
    func publishLimit(until end: UInt64) -> Bool {
        let capacity = UInt64(view.capacity)
        let limitWord = view.word(RingLayout.Producer.limit)
        // Seq_cst fence, then the slot loads: the producer's half of the join handshake (Dekker).
        // Partner: the joiner's seq_cst store of `active` followed by its seq_cst load of `limit`
        // (RingConsumer.join). Either this scan sees the joiner, or the joiner sees the limit
        // stored below.
        CShmAtomics_fence_seq_cst()
        let first = gatingMinimum()
        CShmAtomics_u64_store_seq_cst(limitWord, first &+ capacity)
        let second = gatingMinimum()
        // The lower of the two (positions wrap: compare by difference).
        let minimum = Int64(bitPattern: second &- first) < 0 ? second : first
        let limit = minimum &+ capacity
        if minimum != first { CShmAtomics_u64_store_seq_cst(limitWord, limit) }
        state.pointee.limit = limit
        let watermark = limit &- capacity / 4
        // Look again at the watermark; if already past it, only when the limit itself is reached.
        state.pointee.rescanAt =
            Int64(bitPattern: watermark &- state.pointee.position) > 0 ? watermark : limit
        return Int64(bitPattern: end &- limit) <= 0
    }

    /// The lowest cursor of the active gating consumers, or the producer's position if none.
    ///
    /// Slot memory is written by consumers: each value is read once and checked (`sampleSlot`).
    /// A byte lag limit exceeded demotes the consumer (it stops gating); a cursor outside the
    /// window evicts it.
    @usableFromInline
    func gatingMinimum() -> UInt64 {
        let position = state.pointee.position
        let capacity = UInt64(view.capacity)
        // Never past the last published tail: what lies beyond it is this batch's own records.
        var largestLag: UInt64 = position &- state.pointee.publishedTail
        for index in 0..<slotCount {
            switch sampleSlot(index, position: position) {
            case .notGating:
                continue
            case .unstable:
                largestLag = capacity
            case .gating(let generation, let cursor):
                let lag = position &- cursor
                // Read once; any value is harmless (0: no limit). Measured from the published tail:
                // a batch's records, not visible yet, are not the consumer's lag.
                let lagLimit = CShmAtomics_u64_load_relaxed(slotWord(index, RingLayout.Slot.lagLimitBytes))
                let behind = state.pointee.publishedTail &- cursor
                if lagLimit != 0 && behind <= capacity && behind >= lagLimit {
                    demote(index, generation: generation)
                } else {
                    largestLag = max(largestLag, lag)
                }
            }
        }
        return position &- largestLag
    }

    /// Reads one slot: the producer's private generation and policy, the consumer's `active` and
    /// cursor, each once, consistently (a slot that changed in between is read again), and
    /// validated. A registered gating consumer whose join was validated and whose cursor lies
    /// outside [position - capacity, position] is evicted here.
    @usableFromInline
    func sampleSlot(_ index: Int, position: UInt64) -> SlotSample {
        let activeWord = slotWord(index, RingLayout.Slot.active)
        for _ in 0..<4 {
            // `active` first (seq_cst: the Dekker half, see publishLimit; acquire: a slot seen
            // active is seen with the cursor the joiner stored before it), then the private
            // generation (acquire). In this order a joiner seen active is seen with its
            // generation: the server's release store of it happened before the reply, the reply
            // before the joiner's store of `active`, and that store before this load.
            let active = CShmAtomics_u64_load_seq_cst(activeWord)
            let generation = CShmAtomics_u64_load_acquire(slotControls.generation(index))
            guard generation != 0, active == generation,
                slotControls.evicted(index).pointee != generation, slotControls.demoted(index).pointee != generation,
                // Relaxed: published with the generation (acquire above).
                CShmAtomics_u64_load_relaxed(slotControls.policy(index)) == UInt64(ConsumerPolicy.gating.rawValue)
            else { return .notGating }
            // Acquire: later loads see at least what the consumer released (partner: its release
            // store of `cursor` in `publishCursor`).
            let cursor = CShmAtomics_u64_load_acquire(slotWord(index, RingLayout.Slot.cursor))
            // Acquire: partner of the consumer's stores of `active` (a joiner retrying clears it
            // before it moves its cursor).
            guard CShmAtomics_u64_load_acquire(activeWord) == active else { continue }
            if position &- cursor > UInt64(view.capacity) {
                // Outside the window (behind by more than a capacity, or ahead of the producer).
                // A joiner that was overtaken has such a cursor for a moment: it sees the limit
                // and chooses again, so it is ignored. A consumer whose join was validated never
                // has one: its page holds a value that cannot be right.
                if CShmAtomics_u64_load_acquire(slotWord(index, RingLayout.Slot.joined)) == generation {
                    state.pointee.lastEviction = (
                        index, position, cursor, state.pointee.publishedTail, state.pointee.sequence,
                        state.pointee.intent
                    )
                    evict(index, generation: generation)
                }
                return .notGating
            }
            return .gating(generation: generation, cursor: cursor)
        }
        return .unstable
    }

    /// The record ending at `end` does not fit: demotes the gating consumers that hold it back
    /// and whose time lag limit has run out (counting from the first back-pressured attempt with
    /// no publish since). True if any was demoted.
    @usableFromInline
    func demoteHoldingBack(end: UInt64) -> Bool {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)  // vDSO: no system call
        let nanoseconds = UInt64(now.tv_sec) &* 1_000_000_000 &+ UInt64(now.tv_nsec)
        // The clock starts at the first refused attempt and restarts whenever a publish got
        // through since (a smaller record may fit without looking at the consumers).
        if state.pointee.blockedSince == 0 || state.pointee.published != state.pointee.blockedSincePublished {
            state.pointee.blockedSince = nanoseconds
            state.pointee.blockedSincePublished = state.pointee.published
            return false
        }
        let blocked = nanoseconds &- state.pointee.blockedSince
        let capacity = UInt64(view.capacity)
        var demoted = false
        for index in 0..<slotCount {
            // It holds this record back, and it has published messages left to read (not only
            // this batch's own, invisible records).
            guard case .gating(let generation, let cursor) = sampleSlot(index, position: state.pointee.position),
                end &- cursor > capacity, Int64(bitPattern: state.pointee.publishedTail &- cursor) > 0
            else { continue }
            // Read once; any value is harmless (0: no limit).
            let limit = CShmAtomics_u64_load_relaxed(slotWord(index, RingLayout.Slot.lagLimitNanoseconds))
            if limit != 0 && blocked >= limit {
                demote(index, generation: generation)
                demoted = true
            }
        }
        return demoted
    }

    /// Stops gating on a consumer that exceeded its lag limit: it reads as lossy from now on.
    @usableFromInline
    func demote(_ index: Int, generation: UInt64) { stopGating(index, generation: generation, evicting: false) }

    /// Stops looking at a consumer whose control page holds a value that cannot be right.
    @usableFromInline
    func evict(_ index: Int, generation: UInt64) { stopGating(index, generation: generation, evicting: true) }

    /// Records the decision privately, counts it in the segment, and tells the consumer (the
    /// notice bit: its next poll throws `.demoted` once, or `.evicted` for good). The producer
    /// goes on at once.
    @usableFromInline
    func stopGating(_ index: Int, generation: UInt64, evicting: Bool) {
        (evicting ? slotControls.evicted(index) : slotControls.demoted(index)).pointee = generation
        let total: UInt64
        if evicting {
            state.pointee.evictions &+= 1
            total = state.pointee.evictions
        } else {
            state.pointee.demotions &+= 1
            total = state.pointee.demotions
        }
        // Relaxed: statistics.
        CShmAtomics_u64_store_relaxed(
            view.word(evicting ? RingLayout.Counters.evictions : RingLayout.Counters.demotions), total)
        notify(index, generation: generation, evicting ? RingLayout.noticeEvicted : RingLayout.noticeDemoted)
    }

    @usableFromInline
    func notify(_ index: Int, generation: UInt64, _ bit: UInt64) {
        // The slot may have been handed to a new consumer (a fresh page) since it was sampled:
        // tell only the page that carries this generation.
        guard CShmAtomics_u64_load_acquire(slotWord(index, RingLayout.Slot.generation)) == generation else { return }
        let word = slotWord(index, RingLayout.Slot.notice)
        // The notice names its generation: if a new holder's page arrived in between all the
        // same, its consumer ignores a notice that is not for it.
        let current = CShmAtomics_u64_load_relaxed(word)
        let mine =
            RingLayout.noticeGeneration(current) == RingLayout.noticeGeneration(generation << 2)
            ? current : generation << 2
        // Release: pairs with the consumer's acquire load of the notice in `poll`. The producer's
        // decision is already made (its private record); a consumer that rewrites its notice
        // fools only itself.
        CShmAtomics_u64_store_release(word, mine | bit)
    }

    /// A word of slot `index`'s page.
    @inlinable @inline(__always)
    func slotWord(_ index: Int, _ offset: Int) -> UnsafeMutablePointer<UInt64> {
        (slotBase + (index &* RingLayout.slotSize &+ offset)).assumingMemoryBound(to: UInt64.self)
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

    // MARK: - Serving consumers

    private static func handler(
        key: String, slots: SlotBoard, header: Segment, capacity: Int, id: SegmentID, refusesGating: Bool
    ) -> RendezvousServer.Handler {
        let headerDescriptor = header.descriptor.rawValue
        let mappedSize = UInt64(header.mappedSize)
        let pid = getpid()
        let uid = geteuid()
        return { request, _, _ in
            var reply = RendezvousProtocol.Reply(
                status: .ok, segmentKind: .ring, creatorPID: pid, creatorUID: uid, segmentID: id,
                size: UInt64(capacity), mappedSize: mappedSize)
            reply.layoutVersion = RingLayout.version
            reply.flags = [.creatorOnlyWriters, .readOnlyDescriptor]
            var response = RendezvousServer.Response(reply: reply)
            func fail(_ error: SystemCallError) -> RendezvousServer.Response {
                response.reply.status = .serverError
                response.reply.errno = error.errno.rawValue
                return response
            }
            switch request.kind {
            case .observe:
                // Read-only descriptors of the header and of every slot's current page (for
                // `shmring stat`).
                var descriptors: [FileDescriptor] = []
                do throws(SystemCallError) {
                    descriptors.append(try FileDescriptor(rawValue: headerDescriptor).reopen(.readOnly))
                    for slot in slots.descriptors { descriptors.append(try slot.reopen(.readOnly)) }
                } catch {
                    for descriptor in descriptors { descriptor.closeIgnoringErrors() }
                    return fail(error)
                }
                response.temporaryDescriptors = descriptors
                response.reply.roles = [.data] + Array(repeating: .consumerSlot, count: slots.count)
                return response
            case .attachSegment:
                response.reply.status = .wrongKind
                return response
            case .attachRingConsumer:
                break
            }
            let policy: ConsumerPolicy = request.flags.contains(.gating) ? .gating : .lossy
            if policy == .gating && refusesGating {
                response.reply.status = .gatingRefused
                return response
            }
            let readOnlyHeader: FileDescriptor
            do throws(SystemCallError) {
                readOnlyHeader = try FileDescriptor(rawValue: headerDescriptor).reopen(.readOnly)
            } catch {
                return fail(error)
            }
            let handed: (slot: Int, generation: UInt64, page: FileDescriptor)?
            do throws(RingError) {
                handed = try slots.handOut(policy: policy)
            } catch {
                readOnlyHeader.closeIgnoringErrors()
                response.reply.status = .serverError
                response.reply.errno = error.errno?.rawValue ?? 0
                return response
            }
            guard let handed else {
                readOnlyHeader.closeIgnoringErrors()
                response.reply.status = .noFreeSlot
                return response
            }
            response.reply.slot = UInt32(handed.slot)
            response.reply.generation = handed.generation
            response.descriptors = [handed.page]
            response.temporaryDescriptors = [readOnlyHeader]
            response.reply.roles = [.consumerSlot, .data]
            response.keepOpen = true
            // The consumer detached or died: the producer stops looking at its slot at once, and
            // the slot is free for the next joiner (who gets a fresh page).
            response.onClose = { slots.reclaim(handed.slot) }
            return response
        }
    }
}
