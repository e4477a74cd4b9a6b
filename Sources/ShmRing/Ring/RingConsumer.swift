import CShmAtomics
import CShmLinux
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The consumer's own state, behind a pointer (no exclusivity checks on the hot path).
@usableFromInline
struct ConsumerState {
    /// The position of the next record to read.
    @usableFromInline var position: UInt64
    /// Its sequence number.
    @usableFromInline var sequence: UInt64
    /// The cursor last stored in the slot page.
    @usableFromInline var publishedCursor: UInt64
    @usableFromInline var delivered: UInt64
    @usableFromInline var deliveredBytes: UInt64
    /// Messages and ring bytes missed because the producer lapped this consumer (in all).
    @usableFromInline var lappedMessages: UInt64 = 0
    @usableFromInline var lappedBytes: UInt64 = 0
    /// Missed right before the next message handed out (reported in its `RingRecordInfo`).
    @usableFromInline var pendingMissedMessages: UInt64 = 0
    @usableFromInline var pendingMissedBytes: UInt64 = 0
    /// Records are copied, then validated against the tail intent (lossy, or gating with a lag
    /// limit: the producer may stop waiting for it at any moment).
    @usableFromInline var validating: Bool = false
    /// The producer demoted this consumer to lossy (its lag limit).
    @usableFromInline var demoted: Bool = false
    /// `.demoted` was thrown (once).
    @usableFromInline var demotionReported: Bool = false
    /// The notice bits already acted on.
    @usableFromInline var noticeSeen: UInt64 = 0
    /// Polls of a gating consumer that found nothing (every 4096th looks at the producer's tail).
    @usableFromInline var emptyPolls: UInt64 = 0
    /// At the last lap: the tail intent minus the capacity (everything before it may have been
    /// overwritten) when the lap was found, and again once the resumption point was chosen (the
    /// producer goes on meanwhile). For tests that check where the consumer resumed.
    @usableFromInline var lastLapFloor: (found: UInt64, resumed: UInt64) = (0, 0)
    @usableFromInline var verifiedType: ObjectIdentifier?
    /// `detach()` ran: polling is `.closed` (the memory stays mapped until deinit).
    @usableFromInline var closed: Bool
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

/// A consumer of a ring, in any process of an admitted user.
///
/// Attached by key; the ring's header and data are mapped read-only (the producer sealed them
/// `F_SEAL_FUTURE_WRITE`: no consumer can ever write them), and the consumer writes only its own
/// slot page. A gating consumer holds the producer back: nothing it has not read is overwritten.
/// A lossy consumer never does: when lapped it learns exactly what it missed and resumes at the
/// oldest intact record (docs/ring.md, "Loss"). Not thread-safe: poll from one thread at a time.
public final class RingConsumer {
    @usableFromInline let view: RingView
    @usableFromInline let slot: UnsafeMutableRawPointer
    @usableFromInline let state: UnsafeMutablePointer<ConsumerState>
    @usableFromInline let fingerprint: RingTypeFingerprint
    /// Publish the cursor at least this often (a quarter of the capacity), even inside one poll.
    @usableFromInline let cursorInterval: UInt64
    /// The generation the producer handed out with this attachment (notices carry it).
    @usableFromInline let generation: UInt64
    /// A validating poll's copies (`bufferSize` bytes) and its records (`batchLimit` of them);
    /// allocated when the consumer starts validating.
    @usableFromInline var buffer: UnsafeMutableRawPointer?
    @usableFromInline let bufferSize: Int
    @usableFromInline var gathered: UnsafeMutablePointer<GatheredRecord>?
    /// At most this many records are read between two validations.
    @usableFromInline static var batchLimit: Int { 64 }
    /// A poll that is lapped this many times in a row without handing out a message gives up
    /// with `.cannotKeepUp`.
    @usableFromInline static var lapRetries: Int { 16 }
    public let key: String
    /// The slot this consumer holds.
    public let slotIndex: Int
    /// The ring's identity.
    public let segmentID: SegmentID
    /// How it attached (see `isDemoted`).
    public let configuration: ConsumerConfiguration
    /// Gating or lossy, as it attached (see `isDemoted`).
    public var policy: ConsumerPolicy { configuration.policy }
    /// Its lag limit, if any.
    public var lagLimit: LagLimit? { configuration.lagLimit }
    private let headerSegment: Segment
    private let slotSegment: Segment
    private let connection: FileDescriptor

    /// The ring's capacity in bytes.
    public var capacity: Int { view.capacity }
    /// The longest payload.
    public var maxMessageLength: Int { view.maxMessageLength }
    /// The position of the next record this consumer reads.
    public var position: UInt64 { state.pointee.position }
    /// The sequence number of the next message this consumer reads.
    public var nextSequence: UInt64 { state.pointee.sequence }
    /// Messages delivered to handlers so far.
    public var delivered: UInt64 { state.pointee.delivered }
    /// Messages this consumer missed because it was lapped (exact: sequence differences).
    public var lappedMessages: UInt64 { state.pointee.lappedMessages }
    /// Ring bytes it missed (record headers and padding included: position differences).
    public var lappedBytes: UInt64 { state.pointee.lappedBytes }
    /// Whether the producer demoted this gating consumer to lossy (its lag limit).
    public var isDemoted: Bool { state.pointee.demoted }
    /// At the last lap: the producer's tail intent minus the capacity — the oldest position that
    /// could still hold an intact record — when the lap was found and when the resumption point
    /// had been chosen (tests check the resumption point against them).
    package var lastLapFloor: (found: UInt64, resumed: UInt64) { state.pointee.lastLapFloor }

    /// Attaches to the ring served under `key`, as `configuration` says (by default: gating, from
    /// the next message published).
    ///
    /// - Throws: `RingError` with `.notFound`, `.permissionDenied`, `.incompatibleLayout` (not a
    ///   ring, or a layout this build does not read), `.tooManyConsumers`, `.gatingRefused`,
    ///   `.typeMismatch` (the configured value type is not the ring's), `.corrupted`, `.keyError`,
    ///   `.invalidConfiguration` (a lag limit for a lossy consumer, or one out of range).
    public init(
        key: String, namespace: KeyNamespace = .abstract, configuration: ConsumerConfiguration = ConsumerConfiguration()
    ) throws(RingError) {
        let (start, policy, lagLimit) = (configuration.start, configuration.policy, configuration.lagLimit)
        if let lagLimit {
            guard policy == .gating else {
                throw RingError(
                    .invalidConfiguration, key: key, "a lag limit is for gating consumers; this one is lossy")
            }
            guard lagLimit.bytes != nil || lagLimit.time != nil, (lagLimit.bytes ?? 1) > 0,
                (lagLimit.time ?? .nanoseconds(1)) > .zero
            else {
                throw RingError(.invalidConfiguration, key: key, "a lag limit needs a positive byte count or time")
            }
        }
        // The connection closes whatever it still holds if this initializer fails.
        var connection = try RingRendezvous.connect(
            key: key, namespace: namespace,
            request: RendezvousProtocol.Request(kind: .attachRingConsumer, flags: policy == .gating ? [.gating] : []),
            trustedCreators: configuration.trustedCreators, timeout: configuration.timeout)
        let reply = connection.reply
        guard reply.layoutVersion == RingLayout.version else {
            throw RingError(
                .incompatibleLayout, key: key,
                "\(key) has ring layout version \(reply.layoutVersion); this build reads \(RingLayout.version)")
        }
        guard reply.roles.count == 2, reply.roles.contains(.data), reply.roles.contains(.consumerSlot),
            reply.size >= 4096, reply.size <= 1 << 40, reply.size & (reply.size - 1) == 0
        else {
            throw RingError(.unknown, key: key, "the producer's reply has roles \(reply.roles) and size \(reply.size)")
        }
        let capacity = Int(reply.size)
        if let bytes = lagLimit?.bytes, bytes > capacity {
            throw RingError(
                .invalidConfiguration, key: key,
                "a lag limit of \(bytes) bytes exceeds the ring's capacity (\(capacity)): it could never be reached")
        }
        // Each attach takes its descriptor (and closes it if it fails).
        let header: Segment
        let slotSegment: Segment
        do {
            header = try Segment.attach(
                descriptor: connection.take(.data)!, size: RingLayout.headerMemfdSize(capacity: capacity),
                access: .readOnly, requiredSeals: [.grow, .shrink, .seal, .futureWrite])
            slotSegment = try Segment.attach(
                descriptor: connection.take(.consumerSlot)!, size: RingLayout.slotSize, access: .readWrite)
        } catch {
            throw RingError(error, key: key)
        }
        let config = try RingHeaderCheck(header: header.baseAddress!, capacity: capacity, key: key)
        view = RingView(
            header: header.baseAddress!, capacity: capacity, alignment: config.alignment,
            maxMessageLength: config.maxMessageLength, salt: config.salt)
        self.key = key
        self.slotIndex = Int(reply.slot)
        self.segmentID = reply.segmentID
        self.configuration = configuration
        self.fingerprint = config.fingerprint
        self.headerSegment = header
        self.slotSegment = slotSegment
        self.connection = connection.takeSocket()
        slot = slotSegment.baseAddress!
        // The slot's generation, as the producer's server stored it before replying (checked
        // against the reply below).
        generation = CShmAtomics_u64_load_acquire(
            (slotSegment.baseAddress! + RingLayout.Slot.generation).assumingMemoryBound(to: UInt64.self))
        cursorInterval = UInt64(capacity / 4)
        // One record of the largest size fits, and at least 64 KiB for batches.
        bufferSize = max(1 << 16, RingLayout.align(config.maxMessageLength, 8))
        state = .allocate(capacity: 1)
        state.initialize(
            to: ConsumerState(
                position: 0, sequence: 0, publishedCursor: 0, delivered: 0, deliveredBytes: 0, verifiedType: nil,
                closed: false))
        if policy == .lossy || lagLimit != nil { try startValidating() }
        guard generation != 0, generation == reply.generation else {
            throw RingError(
                .corrupted, key: key, "slot \(reply.slot) has generation \(generation), not \(reply.generation)")
        }
        if let expected = configuration.valueType, expected != config.fingerprint {
            throw RingError(
                .typeMismatch, key: key, "\(key) carries \(config.fingerprint); this consumer expects \(expected)")
        }
        try join(from: start, generation: generation)
    }

    deinit {
        detach()
        slotSegment.close()
        headerSegment.close()
        state.deallocate()
        if let buffer { munmap(buffer, bufferSize) }
        gathered?.deallocate()
    }

    /// From now on, reads are copied and validated (allocates the copy buffer once).
    @usableFromInline
    func startValidating() throws(RingError) {
        if buffer == nil {
            // Mapped, not allocated: the size follows the ring's maximum message length (up to a
            // quarter of the capacity, which a header can claim), pages are only touched as used,
            // and a mapping that cannot be made is a typed error instead of a trap.
            guard
                let mapped = mmap(
                    nil, bufferSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0),
                mapped != MAP_FAILED
            else {
                throw RingError(
                    .outOfResources, key: key, "cannot map a \(bufferSize)-byte copy buffer", syscall: "mmap",
                    errno: Errno(rawValue: errno))
            }
            buffer = mapped
            gathered = .allocate(capacity: Self.batchLimit)
        }
        state.pointee.validating = true
    }

    /// Leaves the ring: marks the slot inactive (a gating consumer stops holding the producer back
    /// at once) and closes the rendezvous connection (the producer reclaims the slot). Polling
    /// afterwards is `.closed`; the memory is unmapped when the consumer is deinitialized.
    public func detach() {
        guard !state.pointee.closed else { return }
        state.pointee.closed = true
        // Release: everything this consumer read happens before the producer may reuse the space.
        CShmAtomics_u64_store_release(slotWord(RingLayout.Slot.active), 0)
        connection.closeIgnoringErrors()
    }

    @inlinable @inline(__always)
    func slotWord(_ offset: Int) -> UnsafeMutablePointer<UInt64> {
        (slot + offset).assumingMemoryBound(to: UInt64.self)
    }

    // MARK: - Joining

    /// Register, then validate (docs/ring.md, "Joining"): store the start cursor, mark the slot
    /// active, then read the producer's published limit; the start is safe when the producer cannot
    /// write past start + capacity without looking at the slots again. Otherwise it was overtaken:
    /// choose a newer start and check again.
    private func join(from start: RingStartPosition, generation: UInt64) throws(RingError) {
        let capacity = UInt64(view.capacity)
        CShmAtomics_u32_store_relaxed(
            (slot + RingLayout.Slot.policy).assumingMemoryBound(to: UInt32.self), policy.rawValue)
        CShmAtomics_u32_store_relaxed(
            (slot + RingLayout.Slot.pid).assumingMemoryBound(to: UInt32.self), UInt32(bitPattern: getpid()))
        // Relaxed: published by the seq_cst store of `active` below (the producer reads them after it).
        CShmAtomics_u64_store_relaxed(slotWord(RingLayout.Slot.lagLimitBytes), UInt64(lagLimit?.bytes ?? 0))
        CShmAtomics_u64_store_relaxed(
            slotWord(RingLayout.Slot.lagLimitNanoseconds),
            lagLimit?.time.map { UInt64(max(1, $0.clampedNanoseconds)) } ?? 0)
        var from = start
        for attempt in 0..<1000 {
            if attempt >= 10 { from = .newest }  // the oldest keeps being overwritten: start at the tail
            if attempt > 0 { sched_yield() }
            guard let candidate = try startCandidate(from) else { continue }
            if attempt > 0 {
                // Not active while the cursor changes: the producer never samples a start that
                // was already refused together with this registration.
                CShmAtomics_u64_store_release(slotWord(RingLayout.Slot.active), 0)
            }
            CShmAtomics_u64_store_relaxed(slotWord(RingLayout.Slot.cursor), candidate.position)
            // Seq_cst: the joiner's half of the Dekker handshake with the producer's rescan.
            // Partner: RingProducer.publishLimit (seq_cst fence, slot loads, seq_cst store of limit).
            CShmAtomics_u64_store_seq_cst(slotWord(RingLayout.Slot.active), generation)
            let limit = CShmAtomics_u64_load_seq_cst(view.word(RingLayout.Producer.limit))
            // Safe when start <= limit <= start + capacity (by difference: positions wrap; a limit
            // behind the start cannot be right: choose again).
            if limit &- candidate.position <= capacity {
                state.pointee.position = candidate.position
                state.pointee.sequence = candidate.sequence
                state.pointee.publishedCursor = candidate.position
                // Release: the validated registration. From here on a cursor outside the window
                // is not a joiner's passing state but a page that cannot be trusted: the producer
                // evicts it (partner: its acquire load in RingProducer.sampleSlot).
                CShmAtomics_u64_store_release(slotWord(RingLayout.Slot.joined), generation)
                return
            }
        }
        throw RingError(.corrupted, key: key, "could not join: the producer's limit never covers its own tail")
    }

    /// Where to start: the tail, or the oldest boundary-index entry the producer still retains.
    private func startCandidate(_ start: RingStartPosition) throws(RingError) -> (position: UInt64, sequence: UInt64)? {
        // The limit before the tail: the tail then is at least as new as the limit's scan, so the
        // window [limit - capacity, tail] is well-formed (checked below anyway).
        // Acquire: pairs with the producer's seq_cst store of the limit.
        let limit = CShmAtomics_u64_load_acquire(view.word(RingLayout.Producer.limit))
        let tail = try readTail()
        guard start == .oldest else { return tail }
        let retained = limit &- UInt64(view.capacity)  // the producer has not been free to overwrite from here on
        guard Int64(bitPattern: tail.position &- retained) >= 0 else { return nil }  // a newer scan: read again
        return oldestBoundary(notBefore: retained, tail: tail)
    }

    /// The producer's tail (position and sequence of the next record), read under its seqlock and
    /// checked.
    @usableFromInline
    func readTail() throws(RingError) -> (position: UInt64, sequence: UInt64) {
        guard
            let tail = view.readSnapshot(
                version: RingLayout.Producer.tailVersion, position: RingLayout.Producer.tail,
                sequence: RingLayout.Producer.tailSequence)
        else { throw RingError(.corrupted, key: key, "the producer's tail stays mid-update") }
        // A position that is not record-aligned cannot be right, and reading a commit word there
        // could run past the end of the data region.
        guard tail.position % UInt64(view.alignment) == 0 else {
            throw RingError(
                .corrupted, key: key, "the producer's tail \(tail.position) is not a multiple of the record alignment")
        }
        return tail
    }

    /// The oldest boundary-index entry within [floor, tail] (record-aligned), or the tail itself.
    /// Every value comes from shared memory and is checked; an entry that does not fit is skipped.
    @usableFromInline
    func oldestBoundary(notBefore floor: UInt64, tail: (position: UInt64, sequence: UInt64)) -> (
        position: UInt64, sequence: UInt64
    ) {
        // A tail before the floor cannot be right (a hostile or broken producer): resume there
        // anyway; the next validation decides.
        guard Int64(bitPattern: tail.position &- floor) >= 0 else { return tail }
        var best = tail
        for entry in 0..<RingLayout.boundaryEntries {
            let base = RingLayout.Boundary.base + entry * RingLayout.Boundary.stride
            guard
                let boundary = view.readSnapshot(
                    version: base + RingLayout.Boundary.version, position: base + RingLayout.Boundary.position,
                    sequence: base + RingLayout.Boundary.sequence, attempts: 4096)
            else { continue }
            // Within [floor, tail], record-aligned, and older than the best so far.
            let sinceFloor = boundary.position &- floor
            guard sinceFloor <= tail.position &- floor, boundary.position % UInt64(view.alignment) == 0,
                sinceFloor < best.position &- floor
            else { continue }
            best = boundary
        }
        return best
    }

    // MARK: - Polling

    /// Hands up to `limit` committed messages to `handler`, in order, and returns how many were
    /// consumed.
    ///
    /// The handler gets each message's bytes as a `RawSpan`, which cannot escape it, and its
    /// `RingRecordInfo`; it returns `.continue`, `.stop` (consume this one and return) or `.leave`
    /// (leave this one for the next poll and return). The cursor is published once per poll, and
    /// at least every quarter of the capacity within one.
    ///
    /// A gating consumer reads in place (the producer cannot overwrite what it has not read). A
    /// lossy consumer, or one with a lag limit, copies a batch of records, validates the batch
    /// once against the producer's tail intent, and hands out only intact copies: when it was
    /// lapped, the messages it missed are counted (`lappedMessages`, and `missedMessages` in the
    /// next message's info) and it goes on at the oldest intact record.
    ///
    /// - Throws: `.corrupted` when a committed record's length cannot be right; `.demoted` once,
    ///   when the producer demoted this consumer (polling again goes on, lossy); `.cannotKeepUp`
    ///   when lapped on every attempt of this poll (it has resumed at the oldest intact record);
    ///   `.evicted`; `.closed` after `detach()`.
    @inlinable
    @discardableResult
    public func poll(limit: Int = .max, _ handler: (RawSpan, RingRecordInfo) -> PollAction) throws(RingError) -> Int {
        guard !state.pointee.closed else { throw closedError() }
        // One load of this consumer's own page per poll: has the producer told it something?
        // Acquire: pairs with the producer's release store of the notice (RingProducer.notify).
        if CShmAtomics_u64_load_acquire(slotWord(RingLayout.Slot.notice)) != state.pointee.noticeSeen {
            try takeNotice()
        }
        if state.pointee.validating { return try pollCopying(limit: limit, handler) }
        var position = state.pointee.position
        var sequence = state.pointee.sequence
        var count = 0
        var bytes: UInt64 = 0
        defer {
            state.pointee.position = position
            state.pointee.sequence = sequence
            state.pointee.delivered &+= UInt64(count)
            state.pointee.deliveredBytes &+= bytes
            if position != state.pointee.publishedCursor { publishCursor(position) }
        }
        reading: while count < limit {
            let (length, size, type): (Int, Int, UInt32)
            switch view.record(at: position, sequence: sequence) {
            case .committed(let committedLength, let committedSize, let committedType):
                (length, size, type) = (committedLength, committedSize, committedType)
            case .padding:
                position &+= UInt64(view.capacity) &- (position & view.mask)
                continue reading
            case .absent:
                // Not committed yet. Now and then, when nothing came at all, make sure it is not a
                // record that can never come (a header rewritten under this consumer).
                if count == 0 {
                    state.pointee.emptyPolls &+= 1
                    if state.pointee.emptyPolls & 4095 == 0 { try checkNotStranded(position, sequence) }
                }
                break reading
            case .malformed(let length):
                throw corruptedRecord(length: length, position: position)
            }
            let payload = UnsafeRawBufferPointer(
                start: view.data + (Int(position & view.mask) &+ RingLayout.recordHeaderSize), count: length)
            let action = handler(
                RawSpan(_unsafeBytes: payload), RingRecordInfo(sequence: sequence, position: position, type: type))
            if action == .leave { break }
            position &+= UInt64(size)
            sequence = (sequence &+ 1) & RingLayout.sequenceMask
            count += 1
            bytes &+= UInt64(length)
            if action == .stop { break }
            if position &- state.pointee.publishedCursor >= cursorInterval { publishCursor(position) }
        }
        return count
    }

    /// The copy-then-validate poll (lossy consumers, and gating ones with a lag limit).
    @inlinable
    func pollCopying(limit: Int, _ handler: (RawSpan, RingRecordInfo) -> PollAction) throws(RingError) -> Int {
        var count = 0
        defer { if state.pointee.position != state.pointee.publishedCursor { publishCursor(state.pointee.position) } }
        let records = gathered.unsafelyUnwrapped
        let copies = buffer.unsafelyUnwrapped
        batches: while count < limit {
            let batch = try gather(maximum: min(limit - count, Self.batchLimit), copying: true) { _, _ in .continue }
            if batch.isEmpty { break }
            for index in batch {
                let record = records[index]
                let info = RingRecordInfo(
                    sequence: record.sequence, position: record.position, type: record.type,
                    missedMessages: state.pointee.pendingMissedMessages, missedBytes: state.pointee.pendingMissedBytes)
                let action = handler(
                    RawSpan(_unsafeBytes: UnsafeRawBufferPointer(start: copies + record.copy, count: record.length)),
                    info)
                if action == .leave {
                    state.pointee.position = record.position
                    state.pointee.sequence = record.sequence
                    break batches
                }
                consume(record)
                count += 1
                if action == .stop { break batches }
            }
            if state.pointee.position &- state.pointee.publishedCursor >= cursorInterval {
                publishCursor(state.pointee.position)
            }
        }
        return count
    }

    /// Zero-copy polling for a lossy consumer (or one with a lag limit): the handler reads each
    /// message in place, and the batch is validated **after** the handler ran. The result says
    /// how many of the handled messages may have been overwritten meanwhile: the caller must
    /// discard what it did with those (they count as missed, and are included in the next
    /// message's `missedMessages` when no intact message followed them in this call). Hands at
    /// most 64 messages per call.
    ///
    /// For a gating consumer without a lag limit nothing can be torn: this is `poll` with a
    /// different result.
    @inlinable
    public func pollInPlace(limit: Int = 64, _ handler: (RawSpan, RingRecordInfo) -> PollAction) throws(RingError)
        -> InPlacePollResult
    {
        guard !state.pointee.closed else { throw closedError() }
        // Acquire: as in `poll`.
        if CShmAtomics_u64_load_acquire(slotWord(RingLayout.Slot.notice)) != state.pointee.noticeSeen {
            try takeNotice()
        }
        guard state.pointee.validating else {
            return InPlacePollResult(handled: try poll(limit: limit, handler), torn: 0)
        }
        defer { if state.pointee.position != state.pointee.publishedCursor { publishCursor(state.pointee.position) } }
        var handedOut = false
        let batch = try gather(maximum: min(max(limit, 0), Self.batchLimit), copying: false) { payload, record in
            // What was missed goes with the first record handed out (gather may have resumed
            // after a lap before handing anything out; it hands out records in one attempt only).
            // Not "the record at the consumer's position": a resumption point can hold padding,
            // and the first record then starts the next lap.
            let first = !handedOut
            handedOut = true
            let info = RingRecordInfo(
                sequence: record.sequence, position: record.position, type: record.type,
                missedMessages: first ? state.pointee.pendingMissedMessages : 0,
                missedBytes: first ? state.pointee.pendingMissedBytes : 0)
            return handler(RawSpan(_unsafeBytes: payload), info)
        }
        let records = gathered.unsafelyUnwrapped
        for index in batch { consume(records[index]) }
        // Everything handed out before the intact part was torn; it is counted as missed.
        return InPlacePollResult(handled: batch.upperBound, torn: batch.lowerBound)
    }

    /// A validated record was handed out and consumed.
    @inlinable @inline(__always)
    func consume(_ record: GatheredRecord) {
        state.pointee.position = record.position &+ UInt64(view.recordSize(record.length))
        state.pointee.sequence = (record.sequence &+ 1) & RingLayout.sequenceMask
        state.pointee.delivered &+= 1
        state.pointee.deliveredBytes &+= UInt64(record.length)
        state.pointee.pendingMissedMessages = 0
        state.pointee.pendingMissedBytes = 0
    }

    /// Reads up to `maximum` committed records from the consumer's position, copying each payload
    /// into the buffer (`copying`) or handing it in place to `visit`, then validates the batch
    /// once: the acquire fence, then the producer's tail intent. Whatever lies before
    /// `tail intent - capacity` may have been overwritten while it was read.
    ///
    /// Returns the indices (into `gathered`) of the intact records, in order. When the consumer
    /// was lapped, the records before them (and any before its position) are counted as missed
    /// and its position moves to the first intact record, or, if none is, to the oldest intact
    /// record the producer's boundary index knows; after `lapRetries` laps in a row with nothing
    /// intact, `.cannotKeepUp`. A record that is intact and malformed is `.corrupted` (after the
    /// intact records before it are handed out).
    @usableFromInline
    func gather(
        maximum: Int, copying: Bool, _ visit: (UnsafeRawBufferPointer, GatheredRecord) -> PollAction
    ) throws(RingError) -> Range<Int> {
        let records = gathered.unsafelyUnwrapped
        let copies = buffer.unsafelyUnwrapped
        let capacity = UInt64(view.capacity)
        var laps = 0
        while true {
            var position = state.pointee.position
            var sequence = state.pointee.sequence
            var count = 0
            var used = 0
            var malformed: (length: Int, position: UInt64)?
            var stoppedByVisitor = false
            var leftByVisitor = false
            reading: while count < maximum {
                // What the producer may be rewriting at this moment is validated below, once for
                // the batch (the tail intent).
                let (length, size, type): (Int, Int, UInt32)
                switch view.record(at: position, sequence: sequence) {
                case .committed(let committedLength, let committedSize, let committedType):
                    (length, size, type) = (committedLength, committedSize, committedType)
                case .padding:
                    position &+= capacity &- (position & view.mask)
                    continue reading
                case .absent:
                    break reading  // not committed yet, or overwritten: the tail intent tells which
                case .malformed(let length):
                    malformed = (length, position)
                    break reading
                }
                let base = view.data + Int(position & view.mask)
                let record = GatheredRecord(
                    position: position, sequence: sequence, length: length, type: type, copy: used)
                if copying {
                    let rounded = RingLayout.align(length, 8)
                    guard used &+ rounded <= bufferSize else { break }
                    // The deliberate racing copy (relaxed atomic loads, in C): validated below.
                    CShmAtomics_copy_racing(copies + used, base + RingLayout.recordHeaderSize, UInt64(length))
                    used &+= rounded
                } else {
                    let action = visit(
                        UnsafeRawBufferPointer(start: base + RingLayout.recordHeaderSize, count: length), record)
                    if action == .leave {
                        leftByVisitor = true
                        break reading
                    }
                    stoppedByVisitor = action == .stop
                }
                records[count] = record
                count += 1
                position &+= UInt64(size)
                sequence = (sequence &+ 1) & RingLayout.sequenceMask
                if stoppedByVisitor { break reading }
            }
            // Acquire fence: every load above (commit words, headers, copies) happens before the
            // tail intent is read. Partner: the producer's release fence after its tail-intent
            // store (RingProducer.reserve): a load that saw any byte of a newer lap makes this
            // load see that lap's intent.
            CShmAtomics_fence_acquire()
            let intent = CShmAtomics_u64_load_relaxed(view.word(RingLayout.Producer.tailIntent))
            let oldest = intent &- capacity  // bytes before this may have been overwritten
            // Positions only grow within a batch, so the torn records are a prefix. A record is
            // intact when its commit word named it (read first) and nothing was claimed over it
            // since (read last): even one reached through a torn length is the real one.
            var first = 0
            while first < count && Int64(bitPattern: records[first].position &- oldest) < 0 { first += 1 }
            if first == 0 && (count > 0 || Int64(bitPattern: position &- oldest) >= 0) {
                if count == 0, let malformed {
                    throw corruptedRecord(length: malformed.length, position: malformed.position)
                }
                return 0..<count
            }
            // Lapped: resume at the first intact record read, or at the oldest the index knows.
            let resume =
                first < count
                ? (position: records[first].position, sequence: records[first].sequence)
                : oldestBoundary(notBefore: oldest, tail: try readTail())
            // Relaxed: diagnostics for tests (where the resumption point stood), ordered by nothing.
            state.pointee.lastLapFloor = (
                oldest, CShmAtomics_u64_load_relaxed(view.word(RingLayout.Producer.tailIntent)) &- capacity
            )
            recordLoss(resumingAt: resume)
            if first < count { return first..<count }
            // Handed out in place and all torn (or the handler left the one it saw): the caller
            // discards them; the handler is not called again in this poll.
            if !copying && (count > 0 || leftByVisitor) { return count..<count }
            laps += 1
            if laps >= Self.lapRetries { throw cannotKeepUp(laps: laps) }
        }
    }

    /// The consumer was lapped: counts what it missed (sequence and position differences) and
    /// moves it to `resume`. A gating consumer can only be lapped once demoted: if the notice
    /// arrived while this poll ran, `isDemoted` says so at once (`.demoted` is thrown by the
    /// next poll, as always).
    @usableFromInline
    func recordLoss(resumingAt resume: (position: UInt64, sequence: UInt64)) {
        // Acquire: pairs with the producer's release store of the notice (RingProducer.notify).
        let notice = CShmAtomics_u64_load_acquire(slotWord(RingLayout.Slot.notice))
        if notice & RingLayout.noticeDemoted != 0
            && RingLayout.noticeGeneration(notice) == RingLayout.noticeGeneration(generation << 2)
        {
            state.pointee.demoted = true
        }
        let messages = (resume.sequence &- state.pointee.sequence) & RingLayout.sequenceMask
        let bytes = resume.position &- state.pointee.position
        state.pointee.lappedMessages &+= messages
        state.pointee.lappedBytes &+= bytes
        state.pointee.pendingMissedMessages &+= messages
        state.pointee.pendingMissedBytes &+= bytes
        state.pointee.position = resume.position
        state.pointee.sequence = resume.sequence
    }

    /// A gating consumer waits at `position` for `sequence`. If the producer's tail says that
    /// record was committed long ago and it is still not there, the consumer was led astray (a
    /// rewritten length or commit word): `.corrupted`, instead of waiting for ever while holding
    /// the producer back.
    @usableFromInline
    func checkNotStranded(_ position: UInt64, _ sequence: UInt64) throws(RingError) {
        let tail = try readTail()
        let ahead = (tail.sequence &- sequence) & RingLayout.sequenceMask
        guard ahead > 0, ahead < 1 << 62 else { return }
        // The record was committed before the tail that counts it was published (the commit's
        // release, then the tail's seqlock; readSnapshot's acquire): read the word again.
        guard view.record(at: position, sequence: sequence) == .absent else { return }
        throw RingError(
            .corrupted, key: key,
            "the record at position \(position) does not carry sequence \(sequence), though the producer's tail is "
                + "at sequence \(tail.sequence): this consumer was led astray by a header that cannot be right")
    }

    /// Acts on the producer's notice bits: evicted (permanent, every poll throws), demoted (once).
    @usableFromInline
    func takeNotice() throws(RingError) {
        let notice = CShmAtomics_u64_load_acquire(slotWord(RingLayout.Slot.notice))
        // A notice names the generation it is for (a producer that raced a new hand-out of the
        // slot could otherwise tell the wrong consumer).
        guard RingLayout.noticeGeneration(notice) == RingLayout.noticeGeneration(generation << 2) else {
            state.pointee.noticeSeen = notice
            return
        }
        if notice & RingLayout.noticeEvicted != 0 {
            throw RingError(
                .evicted, key: key,
                "the producer of \(key) evicted this consumer (slot \(slotIndex)): its control page held a value "
                    + "that cannot be right")
        }
        state.pointee.noticeSeen = notice
        if notice & RingLayout.noticeDemoted != 0 && !state.pointee.demotionReported {
            state.pointee.demoted = true
            state.pointee.demotionReported = true
            try startValidating()
            CShmAtomics_u32_store_relaxed(
                (slot + RingLayout.Slot.policy).assumingMemoryBound(to: UInt32.self), ConsumerPolicy.lossy.rawValue)
            throw RingError(
                .demoted, key: key,
                "this consumer exceeded its lag limit and the producer demoted it to lossy (it was at position "
                    + "\(state.pointee.position)); it goes on, lossy")
        }
    }

    @usableFromInline
    func cannotKeepUp(laps: Int) -> RingError {
        RingError(
            .cannotKeepUp, key: key,
            "lapped \(laps) times in a row (\(state.pointee.lappedMessages) messages missed so far); resumed at "
                + "position \(state.pointee.position), sequence \(state.pointee.sequence)")
    }

    /// Polls values of the ring's type.
    ///
    /// - Throws: `.typeMismatch` when `T`'s fingerprint is not the ring's; `.corrupted` when a
    ///   record's length is not `T`'s size.
    @inlinable
    @discardableResult
    public func poll<T: BitwiseCopyable>(
        as type: T.Type, limit: Int = .max, _ handler: (T, RingRecordInfo) -> PollAction
    ) throws(RingError) -> Int {
        if state.pointee.verifiedType != ObjectIdentifier(T.self) { try verify(T.self) }
        var wrongLength = -1
        let count = try poll(limit: limit) { bytes, info in
            guard bytes.byteCount == MemoryLayout<T>.size else {
                wrongLength = bytes.byteCount
                return .leave
            }
            return handler(bytes.unsafeLoadUnaligned(as: T.self), info)
        }
        if wrongLength >= 0 {
            throw RingError(
                .corrupted, key: key, "a \(wrongLength)-byte record where \(T.self) takes \(MemoryLayout<T>.size)")
        }
        return count
    }

    @usableFromInline
    func publishCursor(_ position: UInt64) {
        state.pointee.publishedCursor = position
        // Release: the reads of every record before `position` happen before the producer can see
        // the space free. Partner: the producer's acquire load of the cursor in gatingMinimum.
        CShmAtomics_u64_store_release(slotWord(RingLayout.Slot.cursor), position)
        // Relaxed: statistics.
        CShmAtomics_u64_store_relaxed(slotWord(RingLayout.Slot.delivered), state.pointee.delivered)
        CShmAtomics_u64_store_relaxed(slotWord(RingLayout.Slot.deliveredBytes), state.pointee.deliveredBytes)
        CShmAtomics_u64_store_relaxed(slotWord(RingLayout.Slot.lappedMessages), state.pointee.lappedMessages)
        CShmAtomics_u64_store_relaxed(slotWord(RingLayout.Slot.lappedBytes), state.pointee.lappedBytes)
    }

    @usableFromInline
    func closedError() -> RingError { RingError(.closed, key: key, "the consumer of \(key) is detached") }

    @usableFromInline
    func corruptedRecord(length: Int, position: UInt64) -> RingError {
        RingError(
            .corrupted, key: key,
            "the record at position \(position) claims \(length) bytes (maximum \(view.maxMessageLength), "
                + "\(view.capacity - Int(position & view.mask)) left in the lap)")
    }

    @usableFromInline
    func verify<T: BitwiseCopyable>(_: T.Type) throws(RingError) {
        try fingerprint.checkRead(T.self, statedAtAttach: configuration.valueType != nil, key: key)
        state.pointee.verifiedType = ObjectIdentifier(T.self)
    }

    /// Whether the producer still serves the ring (its rendezvous connection is open). Never
    /// blocks; a system call, so not for every poll.
    public var isProducerAlive: Bool {
        guard !state.pointee.closed else { return false }
        var entry = pollfd(fd: connection.rawValue, events: CShmLinux_POLLRDHUP, revents: 0)
        return Glibc.poll(&entry, 1, 0) == 0
    }
}
