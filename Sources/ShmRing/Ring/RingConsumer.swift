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
    @usableFromInline var verifiedType: ObjectIdentifier?
    /// `detach()` ran: polling is `.closed` (the memory stays mapped until deinit).
    @usableFromInline var closed: Bool
}

/// A consumer of a ring, in any process of an admitted user.
///
/// Attached by key; the ring's header and data are mapped read-only (the producer sealed them
/// `F_SEAL_FUTURE_WRITE`: no consumer can ever write them), and the consumer writes only its own
/// slot page. A gating consumer holds the producer back: nothing it has not read is overwritten.
/// Not thread-safe: poll from one thread at a time.
public final class RingConsumer {
    @usableFromInline let view: RingView
    @usableFromInline let slot: UnsafeMutableRawPointer
    @usableFromInline let state: UnsafeMutablePointer<ConsumerState>
    @usableFromInline let fingerprint: RingTypeFingerprint
    /// Publish the cursor at least this often (a quarter of the capacity), even inside one poll.
    @usableFromInline let cursorInterval: UInt64
    public let key: String
    /// The slot this consumer holds.
    public let slotIndex: Int
    /// The ring's identity.
    public let segmentID: SegmentID
    /// How it treats the producer.
    public let policy: ConsumerPolicy
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

    /// Attaches to the ring served under `key`.
    ///
    /// - Parameters:
    ///   - from: `.newest` (the next message published) or `.oldest` (the oldest record still
    ///     guaranteed intact).
    ///   - trustedCreators: the uids accepted as producer (default: this process's).
    /// - Throws: `RingError` with `.notFound`, `.permissionDenied`, `.incompatibleLayout` (not a
    ///   ring, or a layout this build does not read), `.tooManyConsumers`, `.gatingRefused`,
    ///   `.corrupted`, `.keyError`.
    public init(
        key: String, from start: RingStartPosition = .newest, policy: ConsumerPolicy = .gating,
        namespace: KeyNamespace = .abstract, trustedCreators: Set<uid_t> = [geteuid()],
        timeout: Duration = .seconds(5)
    ) throws(RingError) {
        let connection = try RingRendezvous.connect(
            key: key, namespace: namespace,
            request: RendezvousProtocol.Request(kind: .attachRingConsumer, flags: policy == .gating ? [.gating] : []),
            trustedCreators: trustedCreators, timeout: timeout)
        let reply = connection.reply
        guard reply.layoutVersion == RingLayout.version else {
            connection.close()
            throw RingError(
                .incompatibleLayout, key: key,
                "\(key) has ring layout version \(reply.layoutVersion); this build reads \(RingLayout.version)")
        }
        guard reply.roles.count == 2, let headerIndex = reply.roles.firstIndex(of: .data),
            let slotIndex = reply.roles.firstIndex(of: .consumerSlot),
            reply.size >= 4096, reply.size <= 1 << 40, reply.size & (reply.size - 1) == 0
        else {
            connection.close()
            throw RingError(.unknown, key: key, "the producer's reply has roles \(reply.roles) and size \(reply.size)")
        }
        let capacity = Int(reply.size)
        let header: Segment
        do {
            header = try Segment.attach(
                descriptor: connection.descriptors[headerIndex], size: RingLayout.headerMemfdSize(capacity: capacity),
                access: .readOnly, requiredSeals: [.grow, .shrink, .seal, .futureWrite])
        } catch {
            connection.descriptors[slotIndex].closeIgnoringErrors()
            connection.socket.closeIgnoringErrors()
            throw RingError(error, key: key)
        }
        let slotSegment: Segment
        do {
            slotSegment = try Segment.attach(
                descriptor: connection.descriptors[slotIndex], size: RingLayout.slotSize, access: .readWrite)
        } catch {
            connection.socket.closeIgnoringErrors()
            throw RingError(error, key: key)
        }
        let config: RingHeaderCheck
        do {
            config = try RingHeaderCheck(header: header.baseAddress!, capacity: capacity, key: key)
        } catch {
            connection.socket.closeIgnoringErrors()
            throw error
        }
        view = RingView(
            header: header.baseAddress!, capacity: capacity, alignment: config.alignment,
            maxMessageLength: config.maxMessageLength, salt: config.salt)
        self.key = key
        self.slotIndex = Int(reply.slot)
        self.segmentID = reply.segmentID
        self.policy = policy
        self.fingerprint = config.fingerprint
        self.headerSegment = header
        self.slotSegment = slotSegment
        self.connection = connection.socket
        slot = slotSegment.baseAddress!
        cursorInterval = UInt64(capacity / 4)
        state = .allocate(capacity: 1)
        state.initialize(
            to: ConsumerState(
                position: 0, sequence: 0, publishedCursor: 0, delivered: 0, deliveredBytes: 0, verifiedType: nil,
                closed: false))
        // The slot's generation, as the producer's server stored it before replying.
        let generation = CShmAtomics_u64_load_acquire(slotWord(RingLayout.Slot.generation))
        guard generation != 0, UInt32(truncatingIfNeeded: generation) == reply.generation else {
            throw RingError(
                .corrupted, key: key, "slot \(reply.slot) has generation \(generation), not \(reply.generation)")
        }
        try join(from: start, generation: generation)
    }

    deinit {
        detach()
        slotSegment.close()
        headerSegment.close()
        state.deallocate()
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
            // Partner: RingProducer.makeRoom (seq_cst fence, slot loads, seq_cst store of limit).
            CShmAtomics_u64_store_seq_cst(slotWord(RingLayout.Slot.active), generation)
            let limit = CShmAtomics_u64_load_seq_cst(view.word(RingLayout.Producer.limit))
            // Safe when limit <= start + capacity (by difference: positions wrap).
            if limit &- candidate.position <= capacity || Int64(bitPattern: limit &- candidate.position) < 0 {
                state.pointee.position = candidate.position
                state.pointee.sequence = candidate.sequence
                state.pointee.publishedCursor = candidate.position
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
        guard
            let tail = view.readSnapshot(
                version: RingLayout.Producer.tailVersion, position: RingLayout.Producer.tail,
                sequence: RingLayout.Producer.tailSequence)
        else { throw RingError(.corrupted, key: key, "the producer's tail stays mid-update") }
        guard start == .oldest else { return tail }
        let capacity = UInt64(view.capacity)
        let retained = limit &- capacity  // the producer has not been free to overwrite from here on
        guard Int64(bitPattern: tail.position &- retained) >= 0 else { return nil }  // a newer scan: read again
        var best = tail
        for entry in 0..<RingLayout.boundaryEntries {
            let base = RingLayout.Boundary.base + entry * RingLayout.Boundary.stride
            guard
                let boundary = view.readSnapshot(
                    version: base + RingLayout.Boundary.version, position: base + RingLayout.Boundary.position,
                    sequence: base + RingLayout.Boundary.sequence)
            else { continue }
            // Within [retained, tail], record-aligned, and older than the best so far.
            let sinceRetained = boundary.position &- retained
            guard sinceRetained <= tail.position &- retained, boundary.position % UInt64(view.alignment) == 0,
                boundary.position &- retained < best.position &- retained
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
    /// - Throws: `.corrupted` when a committed record's length cannot be right.
    @inlinable
    @discardableResult
    public func poll(limit: Int = .max, _ handler: (RawSpan, RingRecordInfo) -> PollAction) throws(RingError) -> Int {
        guard !state.pointee.closed else { throw closedError() }
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
        while count < limit {
            let offset = Int(position & view.mask)
            let base = view.data + offset
            // Acquire: the record's header and payload are visible once its commit word is.
            // Partner: the producer's release store of the commit word (or of a batch's first).
            let word = CShmAtomics_u64_load_acquire(base.assumingMemoryBound(to: UInt64.self)) ^ view.salt
            if word != sequence {
                guard word == sequence | RingLayout.paddingFlag else { break }  // not committed yet
                // Padding: the rest of the lap is empty. Never at a lap's start (that would send
                // this loop round the lap for ever).
                guard offset != 0 else { throw corruptedRecord(length: 0, position: position) }
                position &+= UInt64(view.capacity - offset)
                continue
            }
            let length = Int(base.load(fromByteOffset: RingLayout.Record.length, as: UInt32.self))
            let size = view.recordSize(length)
            guard length <= view.maxMessageLength, offset + size <= view.capacity else {
                throw corruptedRecord(length: length, position: position)
            }
            let type = base.load(fromByteOffset: RingLayout.Record.type, as: UInt32.self)
            let payload = UnsafeRawBufferPointer(start: base + RingLayout.recordHeaderSize, count: length)
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
        try fingerprint.check(T.self, key: key)
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
