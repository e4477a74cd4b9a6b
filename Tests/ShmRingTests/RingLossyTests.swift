import CShmAtomics
import Testing

@testable import ShmRing

#if canImport(Glibc)
import Glibc
#endif

/// Lossy consumers, lag demotion, eviction and hostile memory, in one process (deterministic:
/// the producer runs only when the test tells it to). Across processes: RingLossyAcrossProcessesTests.
@Suite struct RingLossyTests {
    /// A 4096-byte ring of 64-byte records (48-byte payloads): 64 records per lap, 4 per sixteenth.
    static let payload = 48
    static let recordsPerLap: UInt64 = 64

    func message(_ index: UInt64) -> [UInt8] {
        withUnsafeBytes(of: index.littleEndian) { Array($0) }
            + [UInt8](repeating: UInt8(truncatingIfNeeded: index), count: Self.payload - 8)
    }

    func index(of bytes: RawSpan) -> UInt64 {
        bytes.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
    }

    /// Polls everything, checking each message against its sequence; returns (delivered, first
    /// info).
    func pollChecked(_ consumer: RingConsumer) throws -> (count: UInt64, first: RingRecordInfo?) {
        var count: UInt64 = 0
        var first: RingRecordInfo?
        try consumer.poll { bytes, info in
            if first == nil { first = info }
            #expect(index(of: bytes) == info.sequence)
            #expect(bytes.withUnsafeBytes { Array($0) } == message(info.sequence))
            count += 1
            return .continue
        }
        return (count, first)
    }

    @Test func aLappedLossyConsumerLearnsExactlyWhatItMissedAndResumesAtTheOldestIntactRecord() throws {
        let key = uniqueKey()
        let producer = try RingProducer(key: key, configuration: RingConfiguration(capacity: 4096))
        let consumer = try RingConsumer(key: key, configuration: .init(policy: .lossy))
        let published: UInt64 = 1000
        for index in 0..<published { #expect(try producer.publish(message(index)) == .published) }
        let (delivered, first) = try pollChecked(consumer)
        // The producer is idle: the last lap (64 records) is intact, and the boundary index has
        // an entry at its start (sixteenths are 256 bytes, records 64).
        #expect(delivered == Self.recordsPerLap)
        #expect(first?.sequence == published - Self.recordsPerLap)
        #expect(first?.missedMessages == published - Self.recordsPerLap)
        #expect(first?.missedBytes == (published - Self.recordsPerLap) * 64)
        #expect(consumer.lappedMessages + consumer.delivered == published)
        #expect(consumer.lappedBytes == (published - Self.recordsPerLap) * 64)
        // Nothing more, and the next message arrives without a gap.
        #expect(try pollChecked(consumer).count == 0)
        try producer.publish(message(published))
        let next = try pollChecked(consumer)
        #expect(next.count == 1 && next.first?.missedMessages == 0)
    }

    /// A lossy consumer that has read everything up to padding at a lap's end, while the record
    /// after it is not committed yet (a claim in progress, or one a dead producer left), has
    /// nothing to read: it moves past the padding, and its wait sleeps instead of returning at
    /// once (before, it saw the padding as news for ever, and spun).
    @Test func paddingWithNothingAfterItIsNotAMessage() throws {
        let key = uniqueKey()
        let producer = try RingProducer(key: key, configuration: RingConfiguration(capacity: 4096))
        let consumer = try RingConsumer(key: key, configuration: .init(start: .oldest, policy: .lossy))
        let length = 200
        let size = producer.recordSize(length: length)
        try #require(4096 % size != 0, "the lap must end in padding")
        for _ in 0..<(4096 / size) { _ = try producer.publish([UInt8](repeating: 1, count: length)) }
        #expect(try consumer.poll { _, _ in .continue } == 4096 / size)
        var polled = -1
        var waited: RingConsumer.WaitResult?
        let result = try producer.claim(length: length) { (_: inout MutableRawSpan) -> ClaimDecision in
            // The padding is written; this record is not committed while the claim is open.
            polled = (try? consumer.poll { _, _ in .continue }) ?? -1
            waited = try? consumer.wait(timeout: .milliseconds(1))
            return .commit
        }
        #expect(result == .published)
        #expect(polled == 0)
        #expect(waited == .timedOut, "nothing to read: the wait sleeps until its timeout")
        #expect(try consumer.poll { _, _ in .continue } == 1)
    }

    @Test func gatingAndLossyConsumersOnOneRing() throws {
        let key = uniqueKey()
        let producer = try RingProducer(key: key, configuration: RingConfiguration(capacity: 4096))
        let gating = try RingConsumer(key: key)
        let lossy = try RingConsumer(key: key, configuration: .init(policy: .lossy))
        var published: UInt64 = 0
        // The gating consumer holds the producer back after one lap; the lossy one never does.
        while try producer.publish(message(published)) == .published { published += 1 }
        #expect(published == Self.recordsPerLap)
        #expect(try pollChecked(lossy).count == published)
        #expect(try pollChecked(gating).count == published)
        for _ in 0..<10 {
            var round: UInt64 = 0
            while try producer.publish(message(published)) == .published {
                published += 1
                round += 1
            }
            #expect(round > 0)
            #expect(try pollChecked(gating).count == round)
        }
        // The lossy consumer was lapped, never gated: exact accounting.
        _ = try pollChecked(lossy)
        #expect(lossy.delivered + lossy.lappedMessages == published)
        #expect(gating.delivered == published && gating.lappedMessages == 0)
    }

    @Test func aLossyConsumerOverwrittenWhileItsHandlerReadsInPlaceIsToldToDiscard() throws {
        let key = uniqueKey()
        let producer = try RingProducer(key: key, configuration: RingConfiguration(capacity: 4096))
        let consumer = try RingConsumer(key: key, configuration: .init(policy: .lossy))
        var published: UInt64 = 0
        for _ in 0..<10 {
            try producer.publish(message(published))
            published += 1
        }
        // The handler of the first message lets the producer run two laps: that message was
        // overwritten while the handler read it, and the nine after it are gone before they are
        // reached.
        var handed = 0
        let result = try consumer.pollInPlace { _, _ in
            if handed == 0 {
                for _ in 0..<(2 * Self.recordsPerLap) {
                    _ = try? producer.publish(message(published))
                    published += 1
                }
            }
            handed += 1
            return .continue
        }
        #expect(result == InPlacePollResult(handled: 1, torn: 1))
        #expect(consumer.delivered == 0)
        // The next poll resumes at the oldest intact record the boundary index knows (within a
        // sixteenth of the ring, 4 records, of the oldest intact one); the accounting is exact.
        let rest = try pollChecked(consumer)
        #expect(rest.count >= Self.recordsPerLap - 4 && rest.count <= Self.recordsPerLap)
        #expect(consumer.delivered + consumer.lappedMessages == published)
        // Nothing torn without a lap.
        try producer.publish(message(published))
        published += 1
        let quiet = try consumer.pollInPlace { bytes, info in
            #expect(index(of: bytes) == info.sequence)
            return .continue
        }
        #expect(quiet == InPlacePollResult(handled: 1, torn: 0))
    }

    @Test func aConsumerLappedOnEveryAttemptCannotKeepUpAndNeverHangs() throws {
        let key = uniqueKey()
        let producer = try RingProducer(key: key, configuration: RingConfiguration(capacity: 4096))
        let consumer = try RingConsumer(key: key, configuration: .init(policy: .lossy))
        // In a batch: its end publishes the shared tail (which otherwise lags by a few records).
        try producer.batch { producer in for index in 0..<10 { try producer.publish(message(UInt64(index))) } }
        // A producer whose tail intent runs a lap ahead of everything it commits (a hostile or
        // broken one): every attempt finds its position overwritten.
        let intent = producer.view.word(RingLayout.Producer.tailIntent)
        CShmAtomics_u64_store_release(intent, CShmAtomics_u64_load_relaxed(intent) &+ 3 * 4096)
        expectRingError(.cannotKeepUp) { _ = try pollChecked(consumer) }
        #expect(consumer.lappedMessages == 10)
        // It resumed at the producer's tail and goes on from there.
        expectRingError(.cannotKeepUp) { _ = try pollChecked(consumer) }
        CShmAtomics_u64_store_release(intent, CShmAtomics_u64_load_relaxed(intent) &- 3 * 4096)
        try producer.publish(message(10))
        #expect(try pollChecked(consumer).count == 1)
    }

    @Test func aByteLagLimitDemotesAGatingConsumerAndItIsTold() throws {
        let key = uniqueKey()
        let producer = try RingProducer(key: key, configuration: RingConfiguration(capacity: 4096))
        let consumer = try RingConsumer(key: key, configuration: .init(lagLimit: LagLimit(bytes: 1024)))
        // Beyond 1024 bytes of lag the producer stops waiting for it: it never back-pressures.
        var published: UInt64 = 0
        for _ in 0..<500 {
            #expect(try producer.publish(message(published)) == .published)
            published += 1
        }
        let observer = try RingObserver(key: key)
        #expect(observer.snapshot().demotions == 1)
        #expect(observer.snapshot().consumers.first?.demoted == true)
        // Told once, by the next poll; then it reads on, lossy, with exact accounting.
        expectRingError(.demoted) { _ = try pollChecked(consumer) }
        #expect(consumer.isDemoted)
        _ = try pollChecked(consumer)
        #expect(consumer.delivered + consumer.lappedMessages == published)
        #expect(consumer.lappedMessages > 0)
    }

    @Test func aTimeLagLimitDemotesAConsumerThatHoldsTheProducerBackTooLong() throws {
        let key = uniqueKey()
        let producer = try RingProducer(key: key, configuration: RingConfiguration(capacity: 4096))
        let consumer = try RingConsumer(key: key, configuration: .init(lagLimit: LagLimit(time: .milliseconds(20))))
        var published: UInt64 = 0
        while try producer.publish(message(published)) == .published { published += 1 }
        #expect(published == Self.recordsPerLap)
        // Held back: still back-pressured until the limit has passed since the first refusal.
        usleep(30_000)
        #expect(try producer.publish(message(published)) == .published)
        published += 1
        expectRingError(.demoted) { _ = try pollChecked(consumer) }
        _ = try pollChecked(consumer)
        #expect(consumer.delivered + consumer.lappedMessages == published)
        // Without a limit, the same consumer would hold the producer for ever.
        let other = try RingConsumer(key: key)
        while try producer.publish(message(published)) == .published { published += 1 }
        usleep(30_000)
        #expect(try producer.publish(message(published)) == .backPressured)
        _ = other
    }

    @Test func lagLimitsAreChecked() throws {
        let key = uniqueKey()
        let producer = try RingProducer(key: key, configuration: RingConfiguration(capacity: 4096))
        expectRingError(.invalidConfiguration) {
            _ = try RingConsumer(key: key, configuration: .init(policy: .lossy, lagLimit: LagLimit(bytes: 10)))
        }
        expectRingError(.invalidConfiguration) {
            _ = try RingConsumer(key: key, configuration: .init(lagLimit: LagLimit()))
        }
        expectRingError(.invalidConfiguration) {
            _ = try RingConsumer(key: key, configuration: .init(lagLimit: LagLimit(bytes: 0)))
        }
        expectRingError(.invalidConfiguration) {
            _ = try RingConsumer(key: key, configuration: .init(lagLimit: LagLimit(bytes: 8192)))
        }
        expectRingError(.invalidConfiguration) {
            _ = try RingConsumer(key: key, configuration: .init(lagLimit: LagLimit(time: .zero)))
        }
        _ = producer
    }

    @Test func aConsumerWhoseCursorCannotBeRightIsEvictedAndTheProducerGoesOn() throws {
        let key = uniqueKey()
        let producer = try RingProducer(key: key, configuration: RingConfiguration(capacity: 4096))
        let hostile = try RingConsumer(key: key)
        let honest = try RingConsumer(key: key)
        // The hostile consumer claims to have read far ahead of the producer.
        CShmAtomics_u64_store_release(hostile.slot.word(RingLayout.Slot.cursor), 1 << 40)
        var published: UInt64 = 0
        while try producer.publish(message(published)) == .published { published += 1 }
        // Only the honest consumer holds the producer back now.
        #expect(published == Self.recordsPerLap)
        #expect(try RingObserver(key: key).snapshot().evictions == 1)
        expectRingError(.evicted) { _ = try pollChecked(hostile) }
        expectRingError(.evicted) { _ = try pollChecked(hostile) }
        #expect(try pollChecked(honest).count == published)
        #expect(producer.activeConsumerCount == 1)
    }

    @Test func aFormerHolderOfASlotCannotTouchTheNextHolder() throws {
        let key = uniqueKey()
        var configuration = RingConfiguration(capacity: 4096)
        configuration.maxConsumers = 1
        let producer = try RingProducer(key: key, configuration: configuration)
        let former = try RingConsumer(key: key)
        let page = former.slot.page
        former.detach()
        // The rendezvous connection is closed; wait until the producer has reclaimed the slot.
        var next: RingConsumer?
        for _ in 0..<500 where next == nil {
            next = try? RingConsumer(key: key)
            if next == nil { usleep(2_000) }
        }
        let holder = try #require(next)
        #expect(holder.slotIndex == former.slotIndex)
        // The former holder writes its old page (still mapped in its process): cursor far
        // ahead, and `active` set to what the new holder uses.
        let newActive = CShmAtomics_u64_load_relaxed(holder.slot.word(RingLayout.Slot.active))
        (page + RingLayout.Slot.cursor).storeBytes(of: UInt64(1) << 40, as: UInt64.self)
        (page + RingLayout.Slot.active).storeBytes(of: newActive, as: UInt64.self)
        (page + RingLayout.Slot.joined).storeBytes(of: newActive, as: UInt64.self)
        // The producer reads the new holder's own page: no eviction, and it still gates.
        var published: UInt64 = 0
        while try producer.publish(message(published)) == .published { published += 1 }
        #expect(published == Self.recordsPerLap)
        #expect(try RingObserver(key: key).snapshot().evictions == 0)
        #expect(try pollChecked(holder).count == published)
    }

    /// A 4 KiB ring with a gating and a lossy consumer, and two 64-byte records (at 0 and 64).
    func twoRecordsForBothPolicies() throws -> (RingProducer, gating: RingConsumer, lossy: RingConsumer) {
        let key = uniqueKey()
        let producer = try RingProducer(key: key, configuration: RingConfiguration(capacity: 4096))
        let gating = try RingConsumer(key: key)
        let lossy = try RingConsumer(key: key, configuration: .init(policy: .lossy))
        // One by one, then an empty batch: its end publishes the shared tail (which otherwise lags
        // by up to 64 records or a sixteenth of the ring), so the producer's tail says both.
        try producer.publish(message(0))
        try producer.publish(message(1))
        try producer.batch { _ in }
        return (producer, gating, lossy)
    }

    @Test func aCommittedRecordWithALengthThatCannotBeRightIsCorruptedForBothPolicies() throws {
        let (producer, gating, lossy) = try twoRecordsForBothPolicies()
        // The second record (at 64) claims more bytes than the ring allows, under a commit word
        // that matches it (a hostile producer can write both).
        (producer.view.data + 64 + RingLayout.Record.length).storeBytes(of: UInt32.max, as: UInt32.self)
        (producer.view.data + 64).storeBytes(
            of: producer.view.recordWord(sequence: 1, length: UInt32.max, type: 0), as: UInt64.self)
        for consumer in [gating, lossy] {
            var delivered = 0
            expectRingError(.corrupted) {
                try consumer.poll { _, _ in
                    delivered += 1
                    return .continue
                }
                // A lossy poll hands out the intact record before it; the next poll reports.
                try consumer.poll { _, _ in .continue }
            }
            #expect(delivered == 1)
        }
    }

    /// A length rewritten under a committed record no longer matches its commit word: the record
    /// is never handed out. A gating consumer waiting for it is told (`.corrupted`, once the
    /// producer's tail shows it was committed long ago) instead of waiting for ever.
    @Test func aRewrittenLengthIsNeverFollowedAndAStrandedGatingConsumerIsTold() throws {
        let (producer, gating, lossy) = try twoRecordsForBothPolicies()
        (producer.view.data + 64 + RingLayout.Record.length).storeBytes(of: UInt32(16), as: UInt32.self)
        #expect(try pollChecked(lossy).count == 1)
        #expect(try pollChecked(lossy).count == 0)
        #expect(try pollChecked(gating).count == 1)
        expectRingError(.corrupted) {
            for _ in 0..<5000 { _ = try pollChecked(gating) }
        }
    }

    /// Found by the fuzz test: a tail that is not record-aligned, read by a joiner, would put its
    /// first commit-word load across the end of the data region.
    @Test func aTailThatIsNotRecordAlignedIsCorruptedNotACrash() throws {
        let key = uniqueKey()
        let producer = try RingProducer(key: key, configuration: RingConfiguration(capacity: 4096))
        try producer.publish(message(0))
        CShmAtomics_u64_store_release(producer.view.word(RingLayout.Producer.tail), 4093)
        expectRingError(.corrupted) { _ = try RingConsumer(key: key) }
        expectRingError(.corrupted) { _ = try RingConsumer(key: key, configuration: .init(policy: .lossy)) }
    }

    /// From a review: with alignment 8 a padding record can be 8 bytes, the last 8 of the lap. A
    /// consumer waiting there must not read a 16-byte header across the end of the data region.
    @Test func aConsumerWaitingInTheLastEightBytesOfALapReadsNoHeader() throws {
        let key = uniqueKey()
        var configuration = RingConfiguration(capacity: 4096)
        configuration.alignment = 8
        configuration.initialPosition = 4096 - 8
        let producer = try RingProducer(key: key, configuration: configuration)
        let gating = try RingConsumer(key: key)
        let lossy = try RingConsumer(key: key, configuration: .init(policy: .lossy))
        #expect(gating.position == 4088 && lossy.position == 4088)
        for _ in 0..<100 {
            #expect(try pollChecked(gating).count == 0)
            #expect(try pollChecked(lossy).count == 0)
        }
        try producer.publish(message(0))  // an 8-byte padding record, then the message at 4096
        #expect(try pollChecked(gating).count == 1)
        #expect(try pollChecked(lossy).count == 1)
    }

    /// A lossy in-place poll whose own position was overwritten reports the loss with the first
    /// message it hands out.
    @Test func anInPlacePollAfterALapReportsTheLossWithItsFirstMessage() throws {
        let key = uniqueKey()
        let producer = try RingProducer(key: key, configuration: RingConfiguration(capacity: 4096))
        let consumer = try RingConsumer(key: key, configuration: .init(policy: .lossy))
        for index in 0..<1000 { try producer.publish(message(UInt64(index))) }
        var infos: [RingRecordInfo] = []
        let result = try consumer.pollInPlace { _, info in
            infos.append(info)
            return .continue
        }
        #expect(result.torn == 0 && result.handled == infos.count && !infos.isEmpty)
        #expect(infos.first?.missedMessages == infos.first?.sequence)
        #expect(infos.dropFirst().allSatisfy { $0.missedMessages == 0 })
        #expect(infos.first.map { $0.missedMessages + UInt64(infos.count) } ?? 0 <= 1000)
    }

    /// The loss is reported with the first message handed out even when the point where the
    /// consumer resumed holds padding, so that the message starts the next lap (found by the
    /// stale-memory property test: the in-place poll reported the loss only for a message at the
    /// resumption point itself).
    @Test func anInPlacePollReportsTheLossWhenItResumedAtPadding() throws {
        let key = uniqueKey()
        let producer = try RingProducer(key: key, configuration: RingConfiguration(capacity: 4096))
        let consumer = try RingConsumer(key: key, configuration: .init(policy: .lossy))
        for index in 0..<63 { try producer.publish(message(UInt64(index))) }
        try producer.batch { _ in }  // publishes the shared tail, which otherwise lags
        #expect(producer.position == 4032)  // 64 bytes left in the lap
        // A producer whose intent runs laps ahead: everything handed out is torn, and the
        // consumer resumes at the tail (no boundary entry lies after the lap's floor).
        let intent = producer.view.word(RingLayout.Producer.tailIntent)
        CShmAtomics_u64_store_release(intent, CShmAtomics_u64_load_relaxed(intent) &+ 3 * 4096)
        #expect(try consumer.pollInPlace { _, _ in .continue } == InPlacePollResult(handled: 63, torn: 63))
        #expect(consumer.position == 4032 && consumer.lappedMessages == 63)
        CShmAtomics_u64_store_release(intent, CShmAtomics_u64_load_relaxed(intent) &- 3 * 4096)
        // The next record does not fit: padding at 4032, the record at the next lap's start.
        try producer.publish([UInt8](repeating: 9, count: 100))
        var infos: [RingRecordInfo] = []
        let result = try consumer.pollInPlace { _, info in
            infos.append(info)
            return .continue
        }
        #expect(result == InPlacePollResult(handled: 1, torn: 0))
        #expect(infos.first?.sequence == 63 && infos.first?.position == 4096)
        #expect(infos.first?.missedMessages == 63 && infos.first?.missedBytes == 4032)
    }

    /// A notice names the generation it is for: one written for another attachment of the slot
    /// (a producer that raced a new hand-out) is ignored.
    @Test func aNoticeForAnotherGenerationIsIgnored() throws {
        let key = uniqueKey()
        let producer = try RingProducer(key: key, configuration: RingConfiguration(capacity: 4096))
        let consumer = try RingConsumer(key: key)
        let foreign = ((consumer.slot.generation &+ 1) << 2) | RingLayout.noticeEvicted
        CShmAtomics_u64_store_release(consumer.slot.word(RingLayout.Slot.notice), foreign)
        try producer.publish(message(0))
        #expect(try pollChecked(consumer).count == 1)
        #expect(try RingObserver(key: key).snapshot().consumers.first?.evicted == false)
        let mine = (consumer.slot.generation << 2) | RingLayout.noticeEvicted
        CShmAtomics_u64_store_release(consumer.slot.word(RingLayout.Slot.notice), mine)
        expectRingError(.evicted) { _ = try pollChecked(consumer) }
    }
}
