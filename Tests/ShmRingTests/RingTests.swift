import CShmAtomics
import Testing

@testable import ShmRing
import ShmRingTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// Polls everything available into `(sequence, bytes)` pairs.
func drain(_ consumer: RingConsumer, limit: Int = .max) throws -> [(UInt64, [UInt8])] {
    var out: [(UInt64, [UInt8])] = []
    try consumer.poll(limit: limit) { bytes, info in
        out.append((info.sequence, bytes.withUnsafeBytes { Array($0) }))
        return .continue
    }
    return out
}

/// Expects `body` to throw a `RingError` with `code`.
func expectRingError(
    _ code: RingError.Code, sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void
) {
    do {
        try body()
        Issue.record("expected \(code), nothing was thrown", sourceLocation: sourceLocation)
    } catch let error as RingError {
        #expect(error.code == code, "\(error)", sourceLocation: sourceLocation)
    } catch {
        Issue.record("expected RingError \(code), got \(error)", sourceLocation: sourceLocation)
    }
}

@Suite struct RingTests {
    @Test func oneMessageIntoAnIdleRingArrives() throws {
        let key = uniqueKey()
        let producer = try RingProducer(key: key, configuration: RingConfiguration(capacity: 4096))
        let consumer = try RingConsumer(key: key)
        #expect(try drain(consumer).isEmpty)
        #expect(try producer.publish(Array("hello".utf8)) == .published)
        let got = try drain(consumer)
        #expect(got.count == 1)
        #expect(got.first?.0 == 0 && got.first?.1 == Array("hello".utf8))
        #expect(try drain(consumer).isEmpty)
    }

    @Test func messagesWrapWithPaddingAndKeepTheirOrder() throws {
        let key = uniqueKey()
        let producer = try RingProducer(key: key, configuration: RingConfiguration(capacity: 4096))
        let consumer = try RingConsumer(key: key)
        var expected: UInt64 = 0
        for round in 0..<2000 {
            let length = (round * 37) % 300
            let message = (0..<length).map { UInt8(truncatingIfNeeded: $0 &+ round) }
            var result = try producer.publish(message)
            if result == .backPressured {
                for (sequence, bytes) in try drain(consumer) {
                    #expect(sequence == expected)
                    expected += 1
                    _ = bytes
                }
                result = try producer.publish(message)
            }
            #expect(result == .published)
        }
        let rest = try drain(consumer)
        for (sequence, _) in rest {
            #expect(sequence == expected)
            expected += 1
        }
        #expect(expected == 2000)
    }
}

@Suite struct RingEdgeTests {
    func ring(_ capacity: Int = 4096, _ configure: (inout RingConfiguration) -> Void = { _ in }) throws
        -> (RingProducer, RingConsumer)
    {
        var configuration = RingConfiguration(capacity: capacity)
        configure(&configuration)
        let key = uniqueKey()
        let producer = try RingProducer(key: key, configuration: configuration)
        return (producer, try RingConsumer(key: key))
    }

    @Test func aRecordExactlyFillingTheEndOfTheLapNeedsNoPadding() throws {
        let (producer, consumer) = try ring()
        // 240 payload bytes + 16 header = 256: sixteen records fill a 4096-byte lap exactly.
        for lap in 0..<3 {
            for index in 0..<16 {
                #expect(try producer.publish([UInt8](repeating: UInt8(index), count: 240)) == .published)
            }
            #expect(try producer.publish([1]) == .backPressured, "full: the consumer has read nothing of lap \(lap)")
            let got = try drain(consumer)
            #expect(got.count == 16)
            #expect(got.map(\.0) == (0..<16).map { UInt64(lap * 16 + $0) })
            #expect(consumer.position == UInt64((lap + 1) * 4096), "no padding was needed")
        }
    }

    @Test func zeroLengthAndMaximumLengthMessages() throws {
        let (producer, consumer) = try ring()
        #expect(producer.maxMessageLength == 4096 / 4 - 16)
        #expect(try producer.publish([]) == .published)
        let largest = [UInt8](repeating: 7, count: producer.maxMessageLength)
        for _ in 0..<10 {
            #expect(try producer.publish(largest) == .published)
            let got = try drain(consumer)
            #expect(got.allSatisfy { $0.1.isEmpty || $0.1 == largest })
        }
        expectRingError(.messageTooLong) {
            try producer.publish([UInt8](repeating: 0, count: producer.maxMessageLength + 1))
        }
    }

    @Test func invalidConfigurationsAreRefused() {
        for capacity in [0, 1000, 4097, 3 << 12, 2048] {
            expectRingError(.invalidConfiguration) {
                _ = try RingProducer(key: uniqueKey(), configuration: RingConfiguration(capacity: capacity))
            }
        }
        for alignment in [0, 4, 12, 8192] {
            expectRingError(.invalidConfiguration) {
                var configuration = RingConfiguration(capacity: 4096)
                configuration.alignment = alignment
                _ = try RingProducer(key: uniqueKey(), configuration: configuration)
            }
        }
        expectRingError(.invalidConfiguration) {
            var configuration = RingConfiguration(capacity: 4096)
            configuration.maxMessageLength = 2000
            _ = try RingProducer(key: uniqueKey(), configuration: configuration)
        }
        expectRingError(.keyError) { _ = try RingProducer(key: "bad key") }
    }

    @Test func aClaimWhileAnotherIsOutstandingIsRefused() throws {
        let (producer, consumer) = try ring()
        let result = try producer.claim(length: 8) { span in
            span.storeBytes(of: UInt64(42), as: UInt64.self)
            expectRingError(.claimOutstanding) { try producer.publish([1]) }
            do throws(ClaimError<Never>) {
                try producer.claim(length: 1) { _ in .commit }
                Issue.record("a claim inside a claim was not refused")
            } catch {
                guard case .ring(let refusal) = error else { return .abort }
                #expect(refusal.code == .claimOutstanding)
            }
            return .commit
        }
        #expect(result == .published)
        let got = try drain(consumer)
        #expect(got.count == 1 && got[0].1 == withUnsafeBytes(of: UInt64(42)) { Array($0) })
    }

    /// A claim says what came of it; what its body throws comes back as it was thrown.
    @Test func aClaimSaysItAbortedAndPassesTheBodysErrorThrough() throws {
        struct Refusal: Error, Equatable { var reason: Int }
        let (producer, consumer) = try ring()
        #expect(try producer.claim(length: 16) { _ in .abort } == .aborted)
        do throws(ClaimError<Refusal>) {
            try producer.claim(length: 16) { _ throws(Refusal) in throw Refusal(reason: 7) }
            Issue.record("the body's error was lost")
        } catch {
            switch error {
            case .body(let refusal): #expect(refusal == Refusal(reason: 7))
            case .ring(let ringError): Issue.record("unexpected \(ringError)")
            }
        }
        do throws(ClaimError<Never>) {
            try producer.claim(length: producer.maxMessageLength + 1) { _ in .commit }
            Issue.record("a claim longer than the maximum was not refused")
        } catch {
            guard case .ring(let refusal) = error else { return }
            #expect(refusal.code == .messageTooLong)
        }
        #expect(try drain(consumer).isEmpty, "nothing was published")
    }

    @Test func abortAndThrowInsideABatchDropOnlyThoseRecords() throws {
        struct Failure: Error {}
        let (producer, consumer) = try ring()
        try producer.batch { producer in
            try producer.publish([1])
            #expect(try producer.claim(length: 100) { _ in .abort } == .aborted)
            #expect(throws: ClaimError<Failure>.self) {
                try producer.claim(length: 5) { _ throws(Failure) in throw Failure() }
            }
            try producer.publish([3])
            // Nothing of a batch is visible before it ends.
            #expect(try drain(consumer).isEmpty)
        }
        let got = try drain(consumer)
        #expect(got.map(\.1) == [[1], [3]])
        #expect(got.map(\.0) == [0, 1], "aborted records take no sequence number")
    }

    @Test func startingNearTheEndOfThePositionSpace() throws {
        for start: UInt64 in [(UInt64.max - 8191) & ~15, UInt64.random(in: 0...UInt64.max) & ~15] {
            let (producer, consumer) = try ring(4096) {
                $0.initialPosition = start; $0.initialSequence = (1 << 63) - 5
            }
            var expected = (UInt64(1) << 63) - 5
            for round in 0..<5000 {
                let message = [UInt8](repeating: UInt8(truncatingIfNeeded: round), count: round % 200)
                if try producer.publish(message) == .backPressured {
                    for (sequence, _) in try drain(consumer) {
                        #expect(sequence == expected)
                        expected = (expected + 1) & ((1 << 63) - 1)
                    }
                    #expect(try producer.publish(message) == .published)
                }
            }
            for (sequence, _) in try drain(consumer) {
                #expect(sequence == expected)
                expected = (expected + 1) & ((1 << 63) - 1)
            }
            let firstSequence: UInt64 = (1 << 63) - 5
            let sequenceMask: UInt64 = (1 << 63) - 1
            #expect(expected == (firstSequence &+ 5000) & sequenceMask, "the sequence wrapped at 2^63")
            let travelled: UInt64 = consumer.position &- start
            #expect(travelled > 100_000 && travelled < 1_000_000, "positions went on through the wrap")
        }
    }

    @Test func backPressureAndATimedPublish() throws {
        let (producer, consumer) = try ring()
        var published = 0
        while try producer.publish([UInt8](repeating: 1, count: 100)) == .published { published += 1 }
        #expect(published > 0 && published < 4096 / 112 + 1)
        let message = [UInt8](repeating: 2, count: 100)
        let timed = try message.withUnsafeBytes { try producer.publish($0, timeout: .milliseconds(5)) }
        #expect(timed == .backPressured)
        #expect(try drain(consumer, limit: 1).count == 1)
        #expect(try producer.publish(message) == .published)
    }

    @Test func typedValuesCarryTheFingerprint() throws {
        struct Quote: BitwiseCopyable, Equatable {
            var price: Double
            var size: Int32
        }
        let (producer, consumer) = try ring { $0.fingerprint = RingTypeFingerprint(Quote.self) }
        #expect(try producer.publish(value: Quote(price: 1.5, size: 3)) == .published)
        var quotes: [Quote] = []
        try consumer.poll(as: Quote.self) { quote, _ in
            quotes.append(quote)
            return .continue
        }
        #expect(quotes == [Quote(price: 1.5, size: 3)])
        expectRingError(.typeMismatch) { try producer.publish(value: UInt64(1)) }
        expectRingError(.typeMismatch) { try consumer.poll(as: UInt64.self) { _, _ in .continue } }
    }

    /// A ring created with a name and a version of its own (`RingTypeFingerprint(T.self, name:,
    /// version:)`): the producer publishes `T` (its layout is checked); a consumer that states the
    /// same fingerprint reads it, one that states another version is refused at attach, and one
    /// that states none is told to (`T`'s own fingerprint has another name).
    @Test func aTypeWithAChosenNameAndVersionIsPublishedAndReadByThoseWhoStateIt() throws {
        struct Tick: BitwiseCopyable, Equatable {
            var price: Double
            var size: Int32
        }
        let fingerprint = RingTypeFingerprint(Tick.self, name: "Tick", version: 3)
        let (producer, anonymous) = try ring { $0.fingerprint = fingerprint }
        let stated = try RingConsumer(key: producer.key, configuration: .init(valueType: fingerprint))
        #expect(try producer.publish(value: Tick(price: 2.5, size: 7)) == .published)
        var ticks: [Tick] = []
        try stated.poll(as: Tick.self) { tick, _ in
            ticks.append(tick)
            return .continue
        }
        #expect(ticks == [Tick(price: 2.5, size: 7)])
        expectRingError(.typeMismatch) { try anonymous.poll(as: Tick.self) { _, _ in .continue } }
        expectRingError(.typeMismatch) {
            _ = try RingConsumer(
                key: producer.key,
                configuration: .init(valueType: RingTypeFingerprint(Tick.self, name: "Tick", version: 4)))
        }
    }

    @Test func leaveAndStopInAHandler() throws {
        let (producer, consumer) = try ring()
        for value in 0..<5 { try producer.publish([UInt8(value)]) }
        var seen: [UInt8] = []
        let first = try consumer.poll { bytes, _ in
            seen.append(bytes.unsafeLoad(as: UInt8.self))
            return seen.count == 2 ? .stop : .continue
        }
        #expect(first == 2 && seen == [0, 1])
        let second = try consumer.poll { bytes, _ in
            seen.append(bytes.unsafeLoad(as: UInt8.self))
            return .leave
        }
        #expect(second == 0 && seen == [0, 1, 2], "left unconsumed")
        #expect(try drain(consumer).map(\.1) == [[2], [3], [4]])
    }

    @Test func oldestStartsAtWhatAGatingConsumerStillHolds() throws {
        let key = uniqueKey()
        let producer = try RingProducer(key: key, configuration: RingConfiguration(capacity: 4096))
        let holder = try RingConsumer(key: key)
        for value in 0..<10 { try producer.publish([UInt8(value)]) }
        let oldest = try RingConsumer(key: key, configuration: .init(start: .oldest))
        #expect(try drain(oldest).map(\.0) == Array(0..<10))
        let newest = try RingConsumer(key: key, configuration: .init(start: .newest))
        #expect(try drain(newest).isEmpty)
        try producer.publish([10])
        #expect(try drain(newest).map(\.0) == [10])
        _ = holder
    }

    @Test func consumerSlotsAreLimitedAndReused() throws {
        let key = uniqueKey()
        var configuration = RingConfiguration(capacity: 4096)
        configuration.maxConsumers = 2
        let producer = try RingProducer(key: key, configuration: configuration)
        let first = try RingConsumer(key: key)
        let second = try RingConsumer(key: key)
        expectRingError(.tooManyConsumers) { _ = try RingConsumer(key: key) }
        #expect(Set([first.slotIndex, second.slotIndex]) == [0, 1])
        first.detach()
        // The producer's server reclaims the slot when it sees the hang-up (a bound, not a timing).
        var third: RingConsumer?
        let deadline = ContinuousClock.now + .seconds(60)
        while third == nil && ContinuousClock.now < deadline {
            third = try? RingConsumer(key: key)
            if third == nil { usleep(1000) }
        }
        #expect(third?.slotIndex == first.slotIndex)
        // The detached consumer (which read nothing) no longer holds the producer back: three laps
        // go through while the two others drain.
        for _ in 0..<(3 * 4096 / 32) {
            #expect(try producer.publish([UInt8](repeating: 1, count: 16)) == .published)
            _ = try drain(second)
            _ = try drain(third!)
        }
        expectRingError(.closed) { try first.poll { _, _ in .continue } }
    }

    @Test func aBatchLongerThanTheRingIsBackPressuredInsteadOfOverwritingItself() throws {
        let key = uniqueKey()
        let producer = try RingProducer(key: key, configuration: RingConfiguration(capacity: 4096))
        var inBatch = 0
        try producer.batch { producer in
            // No consumer: nothing else holds the producer back, but the batch's own records do.
            while try producer.publish([UInt8](repeating: UInt8(truncatingIfNeeded: inBatch), count: 100)) == .published
            {
                inBatch += 1
                if inBatch > 1000 { break }
            }
        }
        #expect(inBatch > 0 && inBatch <= 4096 / 112, "at most one lap in one batch: \(inBatch)")
        let consumer = try RingConsumer(key: key, configuration: .init(start: .oldest))
        let got = try drain(consumer)
        #expect(got.count == inBatch)
        #expect(
            got.enumerated().allSatisfy {
                $0.element.1 == [UInt8](repeating: UInt8(truncatingIfNeeded: $0.offset), count: 100)
            })
    }

    @Test func publishAfterCloseAndPollAfterDetachAreClosed() throws {
        let (producer, consumer) = try ring()
        consumer.detach()
        expectRingError(.closed) { try consumer.poll { _, _ in .continue } }
        producer.close()
        expectRingError(.closed) { try producer.publish([1]) }
        expectRingError(.closed) { try producer.batch { _ in } }
    }

    @Test func oldestStartsAtAnIntactRecordAfterSeveralLaps() throws {
        let key = uniqueKey()
        let producer = try RingProducer(key: key, configuration: RingConfiguration(capacity: 4096))
        let holder = try RingConsumer(key: key)
        var published: UInt64 = 0
        // Several laps, the holder reading in bursts and lagging behind.
        for _ in 0..<6 {
            while try producer.publish([UInt8](repeating: UInt8(truncatingIfNeeded: published), count: 90))
                == .published
            {
                published += 1
            }
            _ = try drain(holder, limit: 20)
        }
        let heldFrom = holder.nextSequence
        let oldest = try RingConsumer(key: key, configuration: .init(start: .oldest))
        let got = try drain(oldest)
        let first = try #require(got.first?.0)
        // At most a ring's worth behind the tail (what the producer's last look at the holder
        // retained), and not after what the holder holds by more than a sixteenth of the ring.
        #expect(published - first <= 4096 / 106 + 1, "first \(first), published \(published)")
        #expect(first <= heldFrom + 4096 / 16 / 106 + 1, "first \(first), the holder at \(heldFrom)")
        #expect(got.last?.0 == published - 1)
        for (index, message) in got.enumerated() {
            #expect(message.0 == first + UInt64(index))
            #expect(message.1 == [UInt8](repeating: UInt8(truncatingIfNeeded: message.0), count: 90))
        }
    }

    @Test func gatingCanBeRefusedAndKindsAreChecked() throws {
        let key = uniqueKey()
        var configuration = RingConfiguration(capacity: 4096)
        configuration.refusesGating = true
        let producer = try RingProducer(key: key, configuration: configuration)
        expectRingError(.gatingRefused) { _ = try RingConsumer(key: key) }
        // Lossy consumers are served, and the producer never waits.
        let lossy = try RingConsumer(key: key, configuration: .init(policy: .lossy))
        for index in 0..<1000 { #expect(try producer.publish([UInt8(truncatingIfNeeded: index)]) == .published) }
        _ = try drain(lossy)
        #expect(lossy.delivered + lossy.lappedMessages == 1000 && lossy.lappedMessages > 0)
        let error = expectError(.incompatible) { try SharedMemory(key: key).attach() }
        #expect(error?.message.contains("is a ring") == true)
        let memory = SharedMemory(key: uniqueKey())
        try memory.create(size: 64)
        expectRingError(.incompatibleLayout) { _ = try RingConsumer(key: memory.key) }
        _ = producer
    }

    /// Seeded random runs of the record encoding: lengths, alignments, capacities and start
    /// positions; every message comes back with its bytes and sequence.
    @Test func recordEncodingRoundTripsForRandomShapes() throws {
        var generator = SplitMix64(seed: UInt64.random(in: 0...UInt64.max))
        print("recordEncodingRoundTripsForRandomShapes seed \(generator.seed)")
        for _ in 0..<20 {
            let capacity = 4096 << Int(generator.next() % 4)
            let alignment = 8 << Int(generator.next() % 5)
            let start = generator.next() & ~UInt64(alignment - 1)
            let (producer, consumer) = try ring(capacity) {
                $0.alignment = alignment
                $0.initialPosition = start
            }
            var pending: [[UInt8]] = []
            for _ in 0..<500 {
                let length = Int(generator.next() % UInt64(producer.maxMessageLength + 1))
                let fill = UInt8(truncatingIfNeeded: generator.next())
                let message = [UInt8](repeating: fill, count: length)
                if try producer.publish(message) == .backPressured {
                    #expect(try drain(consumer).map(\.1) == pending)
                    pending.removeAll()
                    #expect(try producer.publish(message) == .published)
                }
                pending.append(message)
            }
            #expect(
                try drain(consumer).map(\.1) == pending, "capacity \(capacity) alignment \(alignment) start \(start)")
        }
    }
}
