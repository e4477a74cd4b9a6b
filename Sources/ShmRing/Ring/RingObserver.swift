import CShmAtomics
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// What a ring looks like at one moment, from outside (like AeronStat for Aeron).
public struct RingSnapshot: Sendable, Equatable {
    public var key: String
    public var segmentID: SegmentID
    public var layoutVersion: UInt32
    public var capacity: Int
    public var alignment: Int
    public var maxMessageLength: Int
    public var producerPID: Int32
    /// The position after the last committed record.
    public var position: UInt64
    /// The sequence number of the next message.
    public var nextSequence: UInt64
    public var published: UInt64
    public var publishedBytes: UInt64
    public var backPressureEvents: UInt64
    /// Gating consumers demoted to lossy by their lag limit.
    public var demotions: UInt64
    /// Consumers evicted for a control page that held a value that cannot be right.
    public var evictions: UInt64
    /// The producer's gating limit (lowest gating cursor + capacity, at its last look).
    public var limit: UInt64
    public var refusesGating: Bool
    /// Wakes the producer issued to sleeping consumers (one `FUTEX_WAKE` each), and the times it
    /// slept on a full ring.
    public var wakes: UInt64 = 0
    public var producerSleeps: UInt64 = 0
    public var consumers: [Consumer]

    /// One attached consumer.
    public struct Consumer: Sendable, Equatable {
        public var slot: Int
        public var pid: Int32
        /// Gating or lossy, as the consumer wrote it (a demoted consumer says lossy); nil for a
        /// value this build does not know, which `rawPolicy` holds.
        public var policy: ConsumerPolicy?
        public var rawPolicy: UInt32
        public var position: UInt64
        /// Bytes between the consumer's cursor and the producer's position.
        public var lag: UInt64
        public var delivered: UInt64
        /// Payload bytes delivered.
        public var deliveredBytes: UInt64
        /// Messages it missed because it was lapped, and the ring bytes they took (record headers
        /// and padding included: position differences, so not comparable with `deliveredBytes`).
        public var lappedMessages: UInt64
        public var lappedBytes: UInt64
        /// The producer demoted it to lossy (its lag limit).
        public var demoted: Bool
        /// The producer evicted it.
        public var evicted: Bool
        /// Inside a blocking wait now (announced or asleep); its waits that announced themselves,
        /// that went to sleep, and that a wake ended (docs/wakeup.md).
        public var sleeping: Bool = false
        public var announcedWaits: UInt64 = 0
        public var sleeps: UInt64 = 0
        public var wakeUps: UInt64 = 0
    }
}

/// Observes a running ring without attaching as a consumer: read-only views of its header and of
/// every consumer slot, handed over by the producer's rendezvous server (`observe` request).
public final class RingObserver {
    public let key: String
    private let header: Segment
    private let slots: [Segment]
    private let check: RingHeaderCheck
    private let capacity: Int
    private let reply: RendezvousProtocol.Reply

    /// - Throws: `RingError` (`.notFound`, `.permissionDenied`, `.incompatibleLayout` — for a
    ///   shared-memory key: "KEY is a shared-memory segment, not a ring").
    public init(
        key: String, namespace: KeyNamespace = .abstract, trustedCreators: Set<uid_t> = [geteuid()],
        timeout: Duration = .seconds(5)
    ) throws(RingError) {
        // The connection closes whatever it still holds when it ends (its socket included: an
        // observer needs no liveness channel).
        var connection = try RingRendezvous.connect(
            key: key, namespace: namespace, request: RendezvousProtocol.Request(kind: .observe, flags: []),
            trustedCreators: trustedCreators, timeout: timeout)
        let reply = connection.reply
        guard reply.layoutVersion == RingLayout.version, reply.roles.first == .data,
            reply.roles.dropFirst().allSatisfy({ $0 == .consumerSlot }), reply.size >= 4096, reply.size <= 1 << 40,
            reply.size & (reply.size - 1) == 0, let headerDescriptor = connection.take(.data)
        else {
            throw RingError(
                .incompatibleLayout, key: key,
                "\(key): ring layout version \(reply.layoutVersion), roles \(reply.roles), size \(reply.size)")
        }
        let capacity = Int(reply.size)
        var mapped: [Segment] = []
        do {
            // Each attach takes its descriptor (and closes it if it fails).
            mapped.append(
                try Segment.attach(
                    descriptor: headerDescriptor, size: RingLayout.headerMemfdSize(capacity: capacity),
                    access: .readOnly))
            while let slot = connection.take(.consumerSlot) {
                mapped.append(try Segment.attach(descriptor: slot, size: RingLayout.slotSize, access: .readOnly))
            }
        } catch {
            throw RingError(error, key: key)
        }
        self.check = try RingHeaderCheck(header: mapped[0].baseAddress!, capacity: capacity, key: key)
        self.key = key
        self.header = mapped[0]
        self.slots = Array(mapped.dropFirst())
        self.capacity = capacity
        self.reply = reply
    }

    /// Reads the counters now (each value once, relaxed: a snapshot, not a consistent cut).
    public func snapshot() -> RingSnapshot {
        let base = header.baseAddress!
        func u64(_ offset: Int) -> UInt64 {
            CShmAtomics_u64_load_relaxed((base + offset).assumingMemoryBound(to: UInt64.self))
        }
        func u32(_ offset: Int) -> UInt32 {
            CShmAtomics_u32_load_relaxed((base + offset).assumingMemoryBound(to: UInt32.self))
        }
        // Read before the cursors: a consumer can pass this value while the snapshot is taken
        // (its lag is then 0, never a wrapped negative number).
        let position = u64(RingLayout.Producer.tail)
        var consumers: [RingSnapshot.Consumer] = []
        for (index, slot) in slots.enumerated() {
            let page = slot.baseAddress!
            func word(_ offset: Int) -> UInt64 {
                CShmAtomics_u64_load_relaxed((page + offset).assumingMemoryBound(to: UInt64.self))
            }
            let generation = word(RingLayout.Slot.generation)
            guard generation != 0, word(RingLayout.Slot.active) == generation else { continue }
            let rawPolicy = CShmAtomics_u32_load_relaxed(
                (page + RingLayout.Slot.policy).assumingMemoryBound(to: UInt32.self))
            let cursor = word(RingLayout.Slot.cursor)
            // A notice counts only if it names this attachment's generation.
            let rawNotice = word(RingLayout.Slot.notice)
            let notice =
                RingLayout.noticeGeneration(rawNotice) == RingLayout.noticeGeneration(generation << 2) ? rawNotice : 0
            var consumer =
                RingSnapshot.Consumer(
                    slot: index,
                    pid: Int32(
                        bitPattern: CShmAtomics_u32_load_relaxed(
                            (page + RingLayout.Slot.pid).assumingMemoryBound(to: UInt32.self))),
                    policy: ConsumerPolicy(rawValue: rawPolicy), rawPolicy: rawPolicy,
                    position: cursor, lag: Int64(bitPattern: position &- cursor) < 0 ? 0 : position &- cursor,
                    delivered: word(RingLayout.Slot.delivered),
                    deliveredBytes: word(RingLayout.Slot.deliveredBytes),
                    lappedMessages: word(RingLayout.Slot.lappedMessages),
                    lappedBytes: word(RingLayout.Slot.lappedBytes),
                    demoted: notice & RingLayout.noticeDemoted != 0, evicted: notice & RingLayout.noticeEvicted != 0)
            consumer.sleeping =
                CShmAtomics_u32_load_relaxed((page + RingLayout.Slot.sleeping).assumingMemoryBound(to: UInt32.self))
                != 0
            consumer.announcedWaits = word(RingLayout.Slot.announced)
            consumer.sleeps = word(RingLayout.Slot.sleeps)
            consumer.wakeUps = word(RingLayout.Slot.woken)
            consumers.append(consumer)
        }
        var snapshot = RingSnapshot(
            key: key, segmentID: reply.segmentID, layoutVersion: u32(RingLayout.Config.layoutVersion),
            capacity: capacity,
            alignment: check.alignment, maxMessageLength: check.maxMessageLength,
            producerPID: Int32(bitPattern: u32(RingLayout.Config.producerPID)), position: position,
            nextSequence: u64(RingLayout.Producer.tailSequence), published: u64(RingLayout.Counters.publishedMessages),
            publishedBytes: u64(RingLayout.Counters.publishedBytes),
            backPressureEvents: u64(RingLayout.Counters.backPressureEvents),
            demotions: u64(RingLayout.Counters.demotions), evictions: u64(RingLayout.Counters.evictions),
            limit: u64(RingLayout.Producer.limit),
            refusesGating: u32(RingLayout.Config.flags) & RingLayout.flagRefusesGating != 0, consumers: consumers)
        snapshot.wakes = u64(RingLayout.Wake.wakes)
        snapshot.producerSleeps = u64(RingLayout.Wake.producerSleeps)
        return snapshot
    }
}
