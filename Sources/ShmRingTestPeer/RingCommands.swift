import CShmAtomics
import ShmRing
import ShmRingTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// Peer scenarios for the ring. Messages are `GeneratedMessage`s: every consumer checks sequence,
/// checksum and filler of every message.
enum RingCommands {
    static func now() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return UInt64(time.tv_sec) &* 1_000_000_000 &+ UInt64(time.tv_nsec)
    }

    /// `poll`, with nil for "the producer is gone and everything it committed was read"
    /// (`.producerGone`, which a consumer that spins may see from its poll before its idle does).
    static func pollUnlessGone(
        _ consumer: RingConsumer, limit: Int, _ handler: (RawSpan, RingRecordInfo) -> PollAction
    ) throws -> Int? {
        do {
            return try consumer.poll(limit: limit, handler)
        } catch  where error.code == .producerGone {
            return nil
        }
    }

    /// Spin a little, then yield: two vCPUs are shared by the producer and every consumer.
    static let idle = IdleStrategy.spinThenYield

    /// `--key K --count N (0: until killed) [--capacity C] [--max-size M] [--large-every E]
    /// [--wait-consumers W] [--initial-position P] [--seed S] [--batch B] [--pause-every E2
    /// --pause-us U] [--idle block]`: creates the ring, waits for W consumers, publishes N generated messages
    /// (sizes mostly 24 ... M, every E-th one up to the ring's maximum; a pause of U µs after
    /// every E2, so that consumers that block go to sleep), then waits for the consumers to detach.
    static func produce(_ options: PeerOptions) throws {
        var configuration = RingConfiguration(capacity: options.int("capacity", default: 1 << 20))
        if options.has("initial-position") {
            configuration.initialPosition = UInt64(options.string("initial-position"))!
        }
        configuration.refusesGating = options.has("no-gating")
        let producer = try RingProducer(key: options.string("key"), configuration: configuration)
        let count = options.int("count")
        // `--log FILE`: (sequence, position) of every message published one by one, for tests
        // that check where a lossy consumer resumed.
        let log = options.has("log") ? fopen(options.string("log"), "w") : nil
        defer { if let log { fclose(log) } }
        let maxSize = min(options.int("max-size", default: 256), producer.maxMessageLength)
        let largeEvery = options.int("large-every", default: 100)
        let batch = max(1, options.int("batch", default: 1))
        var random = UInt64(options.int("seed", default: Int(getpid())))
        func next() -> UInt64 {
            random = random &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return random >> 11
        }
        PeerRuntime.report("max_message_length=\(producer.maxMessageLength)")
        PeerRuntime.ready("created")
        let waitFor = options.int("wait-consumers", default: 0)
        while producer.activeConsumerCount < waitFor { usleep(200) }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: producer.maxMessageLength, alignment: 16)
        defer { buffer.deallocate() }
        var sequence: UInt64 = 0
        var backPressured = 0
        var evictionsSeen: UInt64 = 0
        let started = now()
        // `--idle block`: sleep on a full ring until the consumer holding it back reads on.
        let fullRingIdle =
            options.has("idle") && options.string("idle") == "block" ? IdleStrategy.block(timeout: .seconds(30)) : idle
        let pauseEvery = UInt64(max(0, options.int("pause-every", default: 0)))
        let pauseMicroseconds = UInt32(max(0, options.int("pause-us", default: 0)))
        var nextPause = pauseEvery
        while count == 0 || sequence < UInt64(count) {
            if pauseEvery > 0 && sequence >= nextPause {
                usleep(pauseMicroseconds)
                nextPause = sequence + pauseEvery
            }
            var length =
                GeneratedMessage.minimumLength + Int(next() % UInt64(maxSize - GeneratedMessage.minimumLength + 1))
            if largeEvery > 0 && sequence % UInt64(largeEvery) == UInt64(largeEvery - 1) {
                length = maxSize + Int(next() % UInt64(producer.maxMessageLength - maxSize + 1))
            }
            let message = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<length])
            GeneratedMessage.write(sequence: sequence, timestamp: now(), into: message)
            var spins = 0
            if batch > 1 && sequence % UInt64(batch) == 0 {
                // A batch of up to `batch` messages: same content as one by one.
                var inBatch: UInt64 = 0
                try producer.batch { producer in
                    while inBatch < UInt64(batch) && (count == 0 || sequence + inBatch < UInt64(count)) {
                        let length =
                            GeneratedMessage.minimumLength
                            + Int(next() % UInt64(maxSize - GeneratedMessage.minimumLength + 1))
                        let message = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<length])
                        GeneratedMessage.write(sequence: sequence + inBatch, timestamp: now(), into: message)
                        guard try producer.publish(UnsafeRawBufferPointer(message)) == .published else { break }
                        inBatch += 1
                    }
                }
                sequence += inBatch
                if inBatch == 0 { idle.idle(&spins) }
                continue
            }
            while try producer.publish(UnsafeRawBufferPointer(message)) == .backPressured {
                backPressured += 1
                producer.idle(using: fullRingIdle, rounds: &spins)
            }
            if count > 0 && sequence == UInt64(count / 2) { PeerRuntime.ready("half") }
            if sequence & 1023 == 0 && producer.evictions != evictionsSeen {
                // Diagnostics: what the producer saw when it evicted (stderr, read by the tests).
                evictionsSeen = producer.evictions
                let last = producer.lastEviction
                let line =
                    "ring-produce: eviction \(evictionsSeen): slot \(last.slot), position \(last.position), cursor "
                    + "\(last.cursor), published tail \(last.tail), ring sequence \(last.sequence), intent \(last.intent), "
                    + "peer sequence \(sequence)\n"
                _ = line.withCString { write(2, $0, strlen($0)) }
            }
            if let log {
                var entry = (sequence, producer.position &- UInt64(producer.recordSize(length: length)))
                _ = withUnsafeBytes(of: &entry) { fwrite($0.baseAddress, 16, 1, log) }
            }
            sequence += 1
        }
        let elapsed = now() - started
        if let log { fflush(log) }  // complete before "published": the test reads it then
        PeerRuntime.report("published=\(sequence)")
        PeerRuntime.report("wakes=\(producer.wakes)")
        PeerRuntime.report("space_sleeps=\(producer.spaceSleeps)")
        PeerRuntime.report("space_timeouts=\(producer.spaceTimeouts)")
        PeerRuntime.report("back_pressured=\(backPressured)")
        PeerRuntime.report("elapsed_ns=\(elapsed)")
        PeerRuntime.ready("published")
        while producer.activeConsumerCount > 0 { usleep(1000) }
    }

    /// What a consumer checked.
    struct Verification {
        var received = 0
        var gaps = 0
        var corrupted = 0
        var bytes = 0
        var first: UInt64?
        var expected: UInt64 = 0

        /// Checks one message: its ring sequence follows the last one, its content is intact, and
        /// the sequence it carries is its ring sequence (the producer starts both at 0).
        mutating func check(_ bytes: RawSpan, _ info: RingRecordInfo) {
            if first == nil {
                first = info.sequence
                expected = info.sequence
            }
            if info.sequence != expected { gaps += 1 }
            expected = (info.sequence &+ 1) & ((1 << 63) - 1)
            let outcome = bytes.withUnsafeBytes { GeneratedMessage.check($0) }
            if case .valid(let sequence, _) = outcome, sequence == info.sequence {
            } else {
                if corrupted == 0 {
                    // The first one, for the report: what was wrong, and where.
                    let carried = bytes.byteCount >= 8 ? bytes.unsafeLoadUnaligned(as: UInt64.self) : 0
                    PeerRuntime.report(
                        "first_corruption=\(outcome) ring_sequence=\(info.sequence) carried=\(carried) "
                            + "position=\(info.position) length=\(bytes.byteCount)")
                }
                corrupted += 1
            }
            received += 1
            self.bytes += bytes.byteCount
        }

        func report(prefix: String = "") {
            PeerRuntime.report("\(prefix)received=\(received)")
            PeerRuntime.report("\(prefix)gaps=\(gaps)")
            PeerRuntime.report("\(prefix)corrupted=\(corrupted)")
            PeerRuntime.report("\(prefix)bytes=\(bytes)")
            PeerRuntime.report("\(prefix)first_sequence=\(first.map(String.init) ?? "none")")
        }
    }

    /// `--key K --count N [--from oldest|newest]`: attaches, says "attached", reads and checks N
    /// messages, reports, detaches.
    static func consume(_ options: PeerOptions) throws {
        let from: RingStartPosition = options.has("from") && options.string("from") == "newest" ? .newest : .oldest
        let consumer = try RingConsumer(key: options.string("key"), configuration: .init(start: from))
        PeerRuntime.ready("attached")
        let verification = try readAndCheck(consumer, count: options.int("count"))
        verification.report()
        consumer.detach()
    }

    /// Polls `consumer` until `count` messages have arrived, checking each one.
    static func readAndCheck(_ consumer: RingConsumer, count: Int) throws -> Verification {
        var verification = Verification()
        var spins = 0
        while verification.received < count {
            let got = try consumer.poll(limit: count - verification.received) { bytes, info in
                verification.check(bytes, info)
                return .continue
            }
            if got == 0 {
                idle.idle(&spins)
                // Never wait for ever on a producer that is gone (a system call: now and then).
                if spins % 4096 == 0 && !consumer.isProducerAlive {
                    PeerRuntime.fail("the producer went away after \(verification.received) of \(count) messages")
                }
            } else {
                spins = 0
            }
        }
        return verification
    }

    /// `--key K --until N [--policy lossy|gating] [--lag-bytes B] [--lag-ms T] [--sleep-every E
    /// --sleep-us U] [--events FILE]`: attaches (gating with a lag limit, or lossy),
    /// says "attached", and reads until its next sequence is N, checking every delivered message
    /// (content, carried sequence) and every reported gap (the missed count must equal the
    /// sequence difference). Sleeps U µs every E messages to fall behind. `.demoted` and
    /// `.cannotKeepUp` are counted and reading goes on. Each resumption is written to FILE as
    /// (expected sequence, resumed sequence, resumed position, lap floor when found, lap floor
    /// when resumed), five UInt64s.
    static func consumeLossy(_ options: PeerOptions) throws {
        let lossy = !options.has("policy") || options.string("policy") == "lossy"
        var lagLimit: LagLimit?
        if options.has("lag-bytes") || options.has("lag-ms") {
            lagLimit = LagLimit(
                bytes: options.has("lag-bytes") ? options.int("lag-bytes") : nil,
                time: options.has("lag-ms") ? .milliseconds(options.int("lag-ms")) : nil)
        }
        let consumer = try RingConsumer(
            key: options.string("key"),
            configuration: .init(start: .newest, policy: lossy ? .lossy : .gating, lagLimit: lagLimit))
        let until = UInt64(options.int("until"))
        let sleepEvery = options.int("sleep-every", default: 0)
        let sleepMicroseconds = UInt32(options.int("sleep-us", default: 0))
        let events = options.has("events") ? fopen(options.string("events"), "w") : nil
        defer { if let events { fclose(events) } }
        PeerRuntime.ready("attached")
        var delivered: UInt64 = 0
        var corrupted = 0
        var unreportedGaps = 0
        var reportedMissed: UInt64 = 0
        var resumptions = 0
        var demoted = 0
        var cannotKeepUp = 0
        var expected = consumer.nextSequence
        var spins = 0
        func check(_ bytes: RawSpan, _ info: RingRecordInfo) -> PollAction {
            if info.missedMessages > 0 {
                reportedMissed += info.missedMessages
                resumptions += 1
                let floor = consumer.lastLapFloor
                var event = (expected, info.sequence, info.position, floor.found, floor.resumed)
                if let events { _ = withUnsafeBytes(of: &event) { fwrite($0.baseAddress, 40, 1, events) } }
            }
            if (info.sequence &- expected) & ((1 << 63) - 1) != info.missedMessages { unreportedGaps += 1 }
            expected = (info.sequence &+ 1) & ((1 << 63) - 1)
            let outcome = bytes.withUnsafeBytes { GeneratedMessage.check($0) }
            if case .valid(let carried, _) = outcome, carried == info.sequence {
            } else {
                corrupted += 1
            }
            delivered += 1
            if sleepEvery > 0 && delivered % UInt64(sleepEvery) == 0 { usleep(sleepMicroseconds) }
            return .continue
        }
        while consumer.nextSequence < until {
            var got = 0
            do throws(RingError) {
                got = try consumer.poll(limit: 4096, check)
            } catch {
                switch error.code {
                case .demoted: demoted += 1
                case .cannotKeepUp: cannotKeepUp += 1
                default: throw error
                }
            }
            if got == 0 {
                idle.idle(&spins)
                if spins % 4096 == 0 && !consumer.isProducerAlive && consumer.nextSequence < until {
                    // Drain once more, then give up: the producer is gone.
                    PeerRuntime.fail("the producer went away at sequence \(consumer.nextSequence) of \(until)")
                }
            } else {
                spins = 0
            }
        }
        PeerRuntime.report("delivered=\(consumer.delivered)")
        PeerRuntime.report("handed=\(delivered)")
        PeerRuntime.report("lapped_messages=\(consumer.lappedMessages)")
        PeerRuntime.report("lapped_bytes=\(consumer.lappedBytes)")
        PeerRuntime.report("reported_missed=\(reportedMissed)")
        PeerRuntime.report("resumptions=\(resumptions)")
        PeerRuntime.report("unreported_gaps=\(unreportedGaps)")
        PeerRuntime.report("corrupted=\(corrupted)")
        PeerRuntime.report("demoted=\(consumer.isDemoted ? 1 : 0)")
        PeerRuntime.report("demoted_errors=\(demoted)")
        PeerRuntime.report("cannot_keep_up=\(cannotKeepUp)")
        PeerRuntime.report("producer_wakes=\(consumer.producerWakes)")
        consumer.detach()
    }

    /// `--key K --rounds R --per-round M`: R times: attach at the newest record, read and check M
    /// messages (continuity from the join point), detach.
    static func churn(_ options: PeerOptions) throws {
        let rounds = options.int("rounds")
        let perRound = options.int("per-round")
        var total = Verification()
        var badRounds = 0
        for _ in 0..<rounds {
            let consumer = try RingConsumer(key: options.string("key"), configuration: .init(start: .newest))
            let verification = try readAndCheck(consumer, count: perRound)
            consumer.detach()
            if verification.gaps != 0 || verification.corrupted != 0 { badRounds += 1 }
            total.received += verification.received
            total.gaps += verification.gaps
            total.corrupted += verification.corrupted
            total.bytes += verification.bytes
        }
        PeerRuntime.report("rounds=\(rounds)")
        PeerRuntime.report("bad_rounds=\(badRounds)")
        total.report()
    }
}
