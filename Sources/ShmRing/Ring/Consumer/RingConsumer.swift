import CShmAtomics
import CShmLinux
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A consumer of a ring, in any process of an admitted user.
///
/// Attached by key; the ring's header and data are mapped read-only (the producer sealed them
/// `F_SEAL_FUTURE_WRITE`: no consumer can ever write them), and the consumer writes only its own
/// slot page. A gating consumer holds the producer back: nothing it has not read is overwritten.
/// A lossy consumer never does: when lapped it learns exactly what it missed and resumes at the
/// oldest intact record (docs/ring.md, "Loss"). Not thread-safe: poll from one thread at a time.
///
/// The work is done by small types with one job each: `RingJoiner` (the lock-free join),
/// `GatingReader` (in place, for gating consumers), `ValidatingReader` (copy or read in place,
/// then validate: lossy consumers and those with a lag limit), `ConsumerSlot` (this consumer's
/// page). This class attaches, holds them, and turns what they report into `RingError`s.
public final class RingConsumer {
    @usableFromInline let view: RingView
    @usableFromInline let slot: ConsumerSlot
    @usableFromInline let state: UnsafeMutablePointer<ConsumerState>
    @usableFromInline let gating: GatingReader
    @usableFromInline let validating: ValidatingReader
    @usableFromInline let fingerprint: RingTypeFingerprint
    public let key: String
    /// The slot this consumer holds.
    public let slotIndex: Int
    /// The ring's identity.
    public let segmentID: SegmentID
    /// How it attached (see `isDemoted`).
    public let configuration: ConsumerConfiguration
    /// Where its key's socket lives.
    public let namespace: KeyNamespace
    /// Gating or lossy, as it attached (see `isDemoted`).
    public var policy: ConsumerPolicy { configuration.policy }
    /// Its lag limit, if any.
    public var lagLimit: LagLimit? { configuration.lagLimit }
    private let headerSegment: Segment
    private let slotSegment: Segment
    private let doorbellSegment: Segment
    /// The rendezvous connection: it hangs up when the producer goes.
    let connection: FileDescriptor
    /// Sleeping and being woken (docs/wakeup.md); made at the first wait.
    var sleeper: Sleeper?
    /// The `AsyncSequence` waiting threads running for this consumer (for the tests).
    package var waitingThreads = 0

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
        guard reply.roles.count == 3, reply.roles.contains(.data), reply.roles.contains(.consumerSlot),
            reply.roles.contains(.doorbell),
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
        let doorbell: Segment
        do {
            header = try Segment.attach(
                descriptor: connection.take(.data)!, size: RingLayout.headerMemfdSize(capacity: capacity),
                access: .readOnly, requiredSeals: [.grow, .shrink, .seal, .futureWrite])
            slotSegment = try Segment.attach(
                descriptor: connection.take(.consumerSlot)!, size: RingLayout.slotSize, access: .readWrite)
            doorbell = try Segment.attach(
                descriptor: connection.take(.doorbell)!, size: RingLayout.Doorbell.size, access: .readWrite,
                requiredSeals: [.grow, .shrink, .seal])
        } catch {
            throw RingError(error, key: key)
        }
        guard
            (doorbell.baseAddress! + RingLayout.Doorbell.magicOffset).load(as: UInt64.self)
                == RingLayout.Doorbell.magic
        else {
            throw RingError(.corrupted, key: key, "the doorbell page of \(key) does not start with its magic number")
        }
        let config = try RingHeaderCheck(header: header.baseAddress!, capacity: capacity, key: key)
        let view = RingView(
            header: header.baseAddress!, capacity: capacity, alignment: config.alignment,
            maxMessageLength: config.maxMessageLength, salt: config.salt)
        self.view = view
        self.key = key
        self.slotIndex = Int(reply.slot)
        self.segmentID = reply.segmentID
        self.configuration = configuration
        self.namespace = namespace
        self.fingerprint = config.fingerprint
        self.headerSegment = header
        self.slotSegment = slotSegment
        self.doorbellSegment = doorbell
        self.connection = connection.takeSocket()
        // The slot's generation, as the producer's server stored it before replying (checked
        // against the reply below).
        let generation = CShmAtomics_u64_load_acquire(
            (slotSegment.baseAddress! + RingLayout.Slot.generation).assumingMemoryBound(to: UInt64.self))
        let slot = ConsumerSlot(page: slotSegment.baseAddress!, generation: generation)
        let state = UnsafeMutablePointer<ConsumerState>.allocate(capacity: 1)
        state.initialize(to: ConsumerState(view: view, slot: slot))
        // The mirrored wake-up: "the producer sleeps because of slot N, epoch 0". (Registering
        // this process for membarrier is what lets the producer's sleep make it fence.)
        // A lossy consumer never holds the producer back: a token the producer never writes.
        state.pointee.spaceWaitToken = policy == .gating ? UInt64(reply.slot) << 32 | 1 : .max
        state.pointee.symmetricFence = !Membarrier.registered
        self.slot = slot
        self.state = state
        gating = GatingReader(state: state)
        validating = ValidatingReader(state: state)
        if policy == .lossy || lagLimit != nil { try startValidating() }
        guard generation != 0, generation == reply.generation else {
            throw RingError(
                .corrupted, key: key, "slot \(reply.slot) has generation \(generation), not \(reply.generation)")
        }
        if let expected = configuration.valueType, expected != config.fingerprint {
            throw RingError(
                .typeMismatch, key: key, "\(key) carries \(config.fingerprint); this consumer expects \(expected)")
        }
        do {
            try RingJoiner(view: view, slot: slot, state: state).join(from: start, policy: policy, lagLimit: lagLimit)
        } catch {
            throw ringError(error)
        }
    }

    deinit {
        detach()
        sleeper = nil
        slotSegment.close()
        headerSegment.close()
        doorbellSegment.close()
        if let buffer = state.pointee.buffer { munmap(buffer, state.pointee.bufferSize) }
        state.pointee.gathered?.deallocate()
        state.deallocate()
    }

    /// From now on, reads are copied and validated (maps the copy buffer once).
    @usableFromInline
    func startValidating() throws(RingError) {
        if state.pointee.buffer == nil {
            // Mapped, not allocated: the size follows the ring's maximum message length (up to a
            // quarter of the capacity, which a header can claim), pages are only touched as used,
            // and a mapping that cannot be made is a typed error instead of a trap.
            let size = state.pointee.bufferSize
            guard
                let mapped = mmap(
                    nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0),
                mapped != MAP_FAILED
            else {
                throw RingError(
                    .outOfResources, key: key, "cannot map a \(size)-byte copy buffer", syscall: "mmap",
                    errno: Errno(rawValue: errno))
            }
            state.pointee.buffer = mapped
            state.pointee.gathered = .allocate(capacity: ValidatingReader.batchLimit)
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
        CShmAtomics_u64_store_release(slot.word(RingLayout.Slot.active), 0)
        // The sleeper's io_uring holds a poll on the connection (a reference to the socket):
        // tear it down first, or the producer would not see the hang-up until deinit.
        sleeper = nil
        connection.closeIgnoringErrors()
    }

    /// The doorbell's `data_waiting` word (the wake-up path).
    var doorbellWord: UnsafeMutablePointer<UInt32> {
        (doorbellSegment.baseAddress! + RingLayout.Doorbell.dataWaiting).assumingMemoryBound(to: UInt32.self)
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
    ///   `.evicted`; `.producerGone` when the producer is gone and every message it committed was
    ///   read (looked at about once per millisecond of empty polls, without a system call per
    ///   poll); `.closed` after `detach()`.
    @inlinable
    @discardableResult
    public func poll(limit: Int = .max, _ handler: (RawSpan, RingRecordInfo) -> PollAction) throws(RingError) -> Int {
        guard !state.pointee.closed else { throw closedError() }
        // One load of this consumer's own page per poll: has the producer told it something?
        if slot.notice != state.pointee.noticeSeen { try takeNotice() }
        let handled: Int
        do throws(ReadFailure) {
            handled =
                state.pointee.validating
                ? try validating.pollCopying(limit: limit, handler) : try gating.poll(limit: limit, handler)
        } catch {
            throw ringError(error)
        }
        if handled == 0 { try countIdlePoll() }
        return handled
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
        if slot.notice != state.pointee.noticeSeen { try takeNotice() }
        let result: InPlacePollResult
        do throws(ReadFailure) {
            result =
                state.pointee.validating
                ? try validating.pollInPlace(limit: limit, handler)
                : InPlacePollResult(handled: try gating.poll(limit: limit, handler), torn: 0)
        } catch {
            throw ringError(error)
        }
        if result.handled == 0 && result.torn == 0 { try countIdlePoll() }
        return result
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

    /// A poll found nothing: every 64th such poll reads the clock (the vDSO), and once per
    /// millisecond looks at the producer's connection. Throws `.producerGone` when it hung up and
    /// nothing is left to read.
    @usableFromInline
    func countIdlePoll() throws(RingError) {
        state.pointee.idlePolls &+= 1
        guard state.pointee.idlePolls & 63 == 0, producerWentDuringIdleness() else { return }
        throw RingError(
            .producerGone, key: key,
            "the producer of \(key) is gone, and this consumer read every message it committed")
    }

    /// Acts on the producer's notice bits: evicted (permanent, every poll throws), demoted (once).
    @usableFromInline
    func takeNotice() throws(RingError) {
        let notice = slot.notice
        guard slot.isMine(notice) else {
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
            CShmAtomics_u32_store_relaxed(slot.word32(RingLayout.Slot.policy), ConsumerPolicy.lossy.rawValue)
            throw RingError(
                .demoted, key: key,
                "this consumer exceeded its lag limit and the producer demoted it to lossy (it was at position "
                    + "\(state.pointee.position)); it goes on, lossy")
        }
    }

    /// What a reader or the joiner reported, as an error that names the key.
    @usableFromInline
    func ringError(_ failure: ReadFailure) -> RingError {
        switch failure {
        case .malformedRecord(let length, let position):
            RingError(
                .corrupted, key: key,
                "the record at position \(position) claims \(length) bytes (maximum \(view.maxMessageLength), "
                    + "\(view.capacity - view.offset(position)) left in the lap)")
        case .stranded(let position, let sequence, let tailSequence):
            RingError(
                .corrupted, key: key,
                "the record at position \(position) does not carry sequence \(sequence), though the producer's tail "
                    + "is at sequence \(tailSequence): this consumer was led astray by a header that cannot be right")
        case .cannotKeepUp(let laps):
            RingError(
                .cannotKeepUp, key: key,
                "lapped \(laps) times in a row (\(state.pointee.lappedMessages) messages missed so far); resumed at "
                    + "position \(state.pointee.position), sequence \(state.pointee.sequence)")
        case .tailMidUpdate:
            RingError(.corrupted, key: key, "the producer's tail stays mid-update")
        case .tailMisaligned(let position):
            RingError(
                .corrupted, key: key, "the producer's tail \(position) is not a multiple of the record alignment")
        case .joinNeverValidated:
            RingError(.corrupted, key: key, "could not join: the producer's limit never covers its own tail")
        case .joinRefused:
            RingError(
                .evicted, key: key,
                "the producer of \(key) took this consumer's slot back before its join completed (it did not "
                    + "join within the ring's join timeout: stopped or hung mid-join); attach again")
        }
    }

    @usableFromInline
    func closedError() -> RingError { RingError(.closed, key: key, "the consumer of \(key) is detached") }

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
        // Only a hang-up says "gone": a poll interrupted by a signal (EINTR, even with a zero
        // timeout) or short of memory says nothing.
        let hangUp = CShmLinux_POLLRDHUP | Int16(POLLHUP) | Int16(POLLERR)
        return !(Glibc.poll(&entry, 1, 0) > 0 && entry.revents & hangUp != 0)
    }
}
