import CShmAtomics
import ShmRing

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

    /// Spin a little, then yield: two vCPUs are shared by the producer and every consumer.
    static func idle(_ spins: inout Int) {
        spins += 1
        if spins < 64 { CShmAtomics_pause() } else { sched_yield() }
    }

    /// `--key K --count N (0: until killed) [--capacity C] [--max-size M] [--large-every E]
    /// [--wait-consumers W] [--initial-position P] [--seed S] [--batch B]`: creates the ring, waits
    /// for W consumers, publishes N generated messages (sizes mostly 24 ... M, every E-th one up to
    /// the ring's maximum), then waits for the consumers to detach.
    static func produce(_ options: PeerOptions) throws {
        var configuration = RingConfiguration(capacity: options.int("capacity", default: 1 << 20))
        if options.has("initial-position") {
            configuration.initialPosition = UInt64(options.string("initial-position"))!
        }
        let producer = try RingProducer(key: options.string("key"), configuration: configuration)
        let count = options.int("count")
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
        let started = now()
        while count == 0 || sequence < UInt64(count) {
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
                if inBatch == 0 { idle(&spins) }
                continue
            }
            while try producer.publish(UnsafeRawBufferPointer(message)) == .backPressured {
                backPressured += 1
                idle(&spins)
            }
            sequence += 1
        }
        let elapsed = now() - started
        PeerRuntime.report("published=\(sequence)")
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
        let consumer = try RingConsumer(key: options.string("key"), from: from)
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
            if got == 0 { idle(&spins) } else { spins = 0 }
        }
        return verification
    }

    /// `--key K --rounds R --per-round M`: R times: attach at the newest record, read and check M
    /// messages (continuity from the join point), detach.
    static func churn(_ options: PeerOptions) throws {
        let rounds = options.int("rounds")
        let perRound = options.int("per-round")
        var total = Verification()
        var badRounds = 0
        for _ in 0..<rounds {
            let consumer = try RingConsumer(key: options.string("key"), from: .newest)
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
