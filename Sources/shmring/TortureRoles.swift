import ArgumentParser
import ShmRing
import ShmRingTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// The processes `shmring torture` starts (not for direct use): a producer or a consumer that
/// reports its states on descriptor 3, one per line, and, when told to, stops in one state and
/// waits there to be killed (docs/failure-model.md, "The torture suite").
struct TortureRole: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "torture-role", abstract: "A process of `shmring torture` (internal).", shouldDisplay: false)

    enum Role: String, ExpressibleByArgument { case producer, consumer }

    @Argument var role: Role
    @Option var key: String
    @Option var messages = 20_000
    @Option var consumers = 0
    @Option var policy = "gating"
    @Option var idle = "block"
    @Option var from = "oldest"
    /// The state to stop in (and be killed in), once `dieAfter` messages went by.
    @Option var dieAt: String?
    @Option var dieAfter = 0
    @Option var seed: UInt64 = 1

    /// The type tag of the last message of a producer's stream.
    static let endType: UInt32 = 1

    func run() throws {
        switch role {
        case .producer: try produce()
        case .consumer: try consume()
        }
    }

    /// One line on descriptor 3 (the harness's pipe).
    static func say(_ line: String) {
        let text = line + "\n"
        _ = text.withCString { write(3, $0, strlen($0)) }
    }

    /// Stays in the current state until killed.
    static func holdUntilKilled() -> Never {
        while true { pause() }
    }

    // MARK: - The producer

    /// A new ring under `key`, or nil while another producer still serves it.
    static func create(_ key: String, _ configuration: RingConfiguration) throws(RingError) -> RingProducer? {
        do {
            return try RingProducer(key: key, configuration: configuration)
        } catch {
            if error.code == .alreadyExists { return nil }
            throw error
        }
    }

    /// Publishes `messages` generated messages (bursts of 256 with a pause, so that consumers
    /// sleep; now and then a batch of 8), then an end message, and closes.
    func produce() throws {
        var configuration = RingConfiguration(capacity: 64 << 10)
        configuration.maxConsumers = 16
        // A new producer after a killed one: the key frees once the kernel has closed the dead
        // one's socket (about a millisecond).
        let deadline = ContinuousClock.now + .seconds(10)
        var ring = try Self.create(key, configuration)
        while ring == nil && ContinuousClock.now < deadline {
            usleep(1000)
            ring = try Self.create(key, configuration)
        }
        guard let ring else { throw RingError(.alreadyExists, key: key, "still served 10 s after its producer died") }
        Self.say("created")
        if consumers > 0 { _ = ring.waitForConsumers(consumers, timeout: .seconds(30)) }
        var random = SplitMix64(seed: seed)
        var buffer = [UInt8](repeating: 0, count: 256)
        func length(_ sequence: UInt64) -> Int { 24 + Int(sequence % 97) }
        func publish(_ sequence: UInt64, in producer: RingProducer, waiting: Bool) throws -> Bool {
            let count = length(sequence)
            return try buffer.withUnsafeMutableBytes { raw in
                let bytes = UnsafeMutableRawBufferPointer(rebasing: raw[0..<count])
                GeneratedMessage.write(sequence: sequence, timestamp: 0, into: bytes)
                let result =
                    waiting
                    ? try producer.publish(UnsafeRawBufferPointer(bytes), timeout: .seconds(60), idle: .block())
                    : try producer.publish(UnsafeRawBufferPointer(bytes))
                return result == .published
            }
        }
        var sequence: UInt64 = 0
        let total = UInt64(messages)
        var dying = false
        while sequence < total {
            if let dieAt, !dying, sequence >= UInt64(dieAfter) {
                dying = true
                switch dieAt {
                case "claimed":
                    // Half a message written, never committed: no consumer may ever see it.
                    while true {
                        let result = try? ring.claim(length: length(sequence)) {
                            (span: inout MutableRawSpan) -> ClaimDecision in
                            span.storeBytes(of: sequence, toByteOffset: 0, as: UInt64.self)
                            Self.say("claimed")
                            Self.holdUntilKilled()
                        }
                        if result != .backPressured { break }
                        usleep(100)
                    }
                case "mid-batch":
                    try ring.batch { batch in
                        for offset in 0..<3 { _ = try publish(sequence + UInt64(offset), in: batch, waiting: false) }
                        Self.say("mid-batch")
                        Self.holdUntilKilled()
                    }
                default:
                    Self.say(dieAt)  // "publishing": killed somewhere in what follows
                }
            }
            if random.next() % 64 == 0 {
                // A batch of up to 8, all visible at once.
                let published = try ring.batch { batch in
                    var count: UInt64 = 0
                    while count < 8, sequence + count < total,
                        try publish(sequence + count, in: batch, waiting: false)
                    {
                        count += 1
                    }
                    return count
                }
                sequence += published
                if published == 0, try !publish(sequence, in: ring, waiting: true) { throw ExitCode(3) }
                if published == 0 { sequence += 1 }
            } else {
                guard try publish(sequence, in: ring, waiting: true) else { throw ExitCode(3) }
                sequence += 1
            }
            if sequence % 256 == 0 { usleep(UInt32(random.next() % 400)) }
        }
        let end: [UInt8] = [0]
        guard
            try end.withUnsafeBytes({ try ring.publish($0, type: Self.endType, timeout: .seconds(60), idle: .block()) })
                == .published
        else { throw ExitCode(3) }
        Self.say("report published=\(sequence) lost=\(ring.consumersLost)")
        ring.close()
    }

    // MARK: - A consumer

    /// One poll: how many messages it handed out (a demotion or "cannot keep up" hands none: the
    /// gaps show in the next message), or nil when the producer is gone and everything it
    /// committed was read.
    static func poll(_ consumer: RingConsumer, _ check: (RawSpan, RingRecordInfo) -> PollAction) throws(RingError)
        -> Int?
    {
        do {
            return try consumer.poll(limit: 64, check)
        } catch {
            switch error.code {
            case .producerGone: return nil
            case .demoted, .cannotKeepUp: return 0
            default: throw error
            }
        }
    }

    /// Reads and checks every message (its checksum, its carried sequence; a gating consumer sees
    /// no gap, a lossy one has every gap reported), follows the next producer when one goes,
    /// until a producer's end message; then reports.
    func consume() throws {
        let configuration = ConsumerConfiguration(
            start: from == "newest" ? .newest : .oldest, policy: policy == "lossy" ? .lossy : .gating)
        var consumer: RingConsumer
        do {
            consumer = try RingConsumer.attach(waitingFor: key, configuration: configuration, timeout: .seconds(5))
        } catch {
            // No producer within 5 s (a replacement that came after the stream's end), or why not.
            let ended = error.code == .notFound ? "no-producer" : "\(error.code)"
            Self.say("report received=0 gaps=0 unreported=0 corrupted=0 epochs=0 ended=\(ended)")
            return
        }
        Self.say("joined")
        if dieAt == "joined" { Self.holdUntilKilled() }
        let strategy: IdleStrategy = idle == "spin" ? .spin : .block()
        var (received, gaps, unreported, corrupted, epochs) = (0, 0, 0, 0, 1)
        var expected: UInt64?
        var ended = false
        var announced = false
        var failure = "no-producer"
        let dieAfter = self.dieAfter
        let dieAt = self.dieAt
        func check(_ bytes: RawSpan, _ info: RingRecordInfo) -> PollAction {
            if info.type == Self.endType {
                ended = true
                return .stop
            }
            let outcome = bytes.withUnsafeBytes { GeneratedMessage.check($0) }
            if case .valid(let carried, _) = outcome, carried == info.sequence {
            } else {
                corrupted += 1
            }
            if let expected, info.sequence != expected {
                if policy == "gating" {
                    gaps += 1
                } else if info.sequence &- expected != info.missedMessages {
                    unreported += 1
                }
            }
            expected = info.sequence &+ 1
            received += 1
            if dieAt == "mid-batch", received >= dieAfter, !announced {
                Self.say("mid-batch")  // inside a poll, with more of its batch to come
                Self.holdUntilKilled()
            }
            return .continue
        }
        var rounds = 0
        while !ended {
            let got = try Self.poll(consumer, check)
            if let got, got > 0 {
                rounds = 0
                continue
            }
            let gone = got == nil
            if let dieAt, !announced, received >= dieAfter, dieAt == "polling" || dieAt == "asleep" {
                announced = true
                Self.say(dieAt)  // polling: killed in this loop; asleep: in the wait that follows
            }
            if !gone, try consumer.idle(using: strategy, rounds: &rounds) != .producerGone { continue }
            // The producer is gone and everything it committed was read: follow the next one.
            let next: RingConsumer
            do {
                next = try consumer.reattached(timeout: .seconds(10))
            } catch {
                failure = "\(error.code)"
                break
            }
            consumer = next
            epochs += 1
            // A gating follower reads the new producer from its first message (the new producer
            // waited for it): a later start would be a gap.
            expected = policy == "gating" ? 0 : nil
            rounds = 0
        }
        consumer.detach()
        Self.say(
            "report received=\(received) gaps=\(gaps) unreported=\(unreported) corrupted=\(corrupted) "
                + "epochs=\(epochs) ended=\(ended ? "end" : failure)")
    }
}
