import ArgumentParser
import CShmAtomics
import CShmLinux
import ShmRing
import ShmRingTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// `shmring pub KEY`: creates a ring and publishes into it.
struct Pub: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create a ring under KEY and publish generated messages (or lines of standard input).",
        discussion: """
            Generated messages carry a sequence number, a send timestamp and a checksum (at least \
            \(GeneratedMessage.minimumLength) bytes). SIGINT or SIGTERM ends the stream cleanly: an \
            end-of-stream record, then the ring is closed.
            """)

    @Argument(help: "The ring's key: [A-Za-z0-9._-]{1,100}.")
    var key: String

    @Option(help: "Ring capacity, a power of two: 65536, 64KiB, 16MiB, 1GiB.")
    var capacity = ByteSize(bytes: 16 << 20)

    @Option(help: "Consumer slots created with the ring.")
    var maxConsumers = 64

    @Flag(help: "Refuse gating consumers: the publisher then never waits.")
    var noGating = false

    @Option(help: "Bytes per generated message (at least \(GeneratedMessage.minimumLength)).")
    var size = 64

    @Option(help: "Messages to publish (default: until interrupted).")
    var count: Int?

    @Option(help: "Messages per second (default: as fast as the consumers allow).")
    var rate: Double?

    @Option(help: "Publish only once this many consumers are attached.")
    var waitConsumers = 0

    @Option(help: "Seconds to stay after the last message, so that slow consumers can drain.")
    var linger: Double = 0

    @Flag(help: "Publish one message per line of standard input (raw: `sub --verify` refuses them).")
    var stdin = false

    @Option(help: "Record alignment in bytes (8 ... 4096; 64 suits feeds of 48-byte messages and up).")
    var alignment = 16

    @Option(
        help:
            "How to wait on a full ring: spin, yield, backoff, or block (sleep until the consumer holding it back reads on)."
    )
    var idle: String = "backoff"

    @Option(help: "Put the key's socket in this directory instead of the abstract namespace.")
    var dir: String?

    func validate() throws {
        func invalid(_ what: String) -> ValidationError { ValidationError("\(key): \(what)") }
        let bytes = capacity.bytes
        guard bytes >= 4096, bytes <= 1 << 40, bytes & (bytes - 1) == 0 else {
            throw invalid("--capacity \(capacity) is not a power of two between 4KiB and 1TiB")
        }
        guard alignment >= 8, alignment <= 4096, alignment & (alignment - 1) == 0 else {
            throw invalid("--alignment \(alignment) is not a power of two between 8 and 4096")
        }
        guard maxConsumers >= 1, maxConsumers <= 1024 else {
            throw invalid("--max-consumers \(maxConsumers) is not within 1 ... 1024")
        }
        guard stdin || size >= GeneratedMessage.minimumLength else {
            throw invalid("--size \(size) is below the minimum of \(GeneratedMessage.minimumLength) bytes")
        }
        guard stdin || size <= bytes / 4 - 16 else {
            throw invalid("--size \(size) exceeds the largest message of a \(capacity) ring (\(bytes / 4 - 16) bytes)")
        }
        if let count, count < 0 { throw invalid("--count must not be negative, got \(count)") }
        if let rate {
            guard rate.isFinite, rate >= 0.001, rate <= 1e9 else {
                throw invalid("--rate \(rate) is not within 0.001 ... 1e9 messages per second")
            }
            guard !stdin else { throw invalid("--rate applies to generated messages, not to --stdin") }
        }
        guard waitConsumers >= 0, waitConsumers <= maxConsumers else {
            throw invalid("--wait-consumers \(waitConsumers) is not within 0 ... --max-consumers (\(maxConsumers))")
        }
        guard linger.isFinite, linger >= 0, linger <= 1e6 else {
            throw invalid("--linger \(linger) is not within 0 ... 1e6 seconds")
        }
        guard idleStrategy(named: idle) != nil else {
            throw invalid("--idle \(idle): expected spin, yield, backoff or block")
        }
    }

    /// How to wait on a full ring; a blocking wait lasts a tenth of a second at most, so that
    /// SIGINT and SIGTERM are seen.
    var fullRing: IdleStrategy { idleStrategy(named: idle, blockTimeout: .milliseconds(100))! }

    func run() throws {
        CShmLinux_install_stop_signals()
        var configuration = RingConfiguration(capacity: capacity.bytes)
        configuration.maxConsumers = maxConsumers
        configuration.refusesGating = noGating
        configuration.alignment = alignment
        let producer = try RingProducer(key: key, configuration: configuration, namespace: namespace(dir))
        guard stdin || size <= producer.maxMessageLength else {
            throw CommandFailure(
                "\(key): --size \(size) exceeds the ring's maximum message length \(producer.maxMessageLength)")
        }
        printError(
            "shmring pub: serving \(key) (capacity \(capacity), max message \(producer.maxMessageLength) bytes, "
                + "segment \(producer.segmentID))")
        // Blocks (a tenth of a second at a time, to see SIGINT/SIGTERM): no poll loop.
        while !stopRequested && !producer.waitForConsumers(waitConsumers, timeout: .milliseconds(100)) {}
        var published: UInt64 = 0
        var bytes: UInt64 = 0
        var backPressured: UInt64 = 0
        var failure: Error?
        do {
            if stdin {
                try publishLines(producer, &published, &bytes, &backPressured)
            } else {
                try publishGenerated(producer, &published, &bytes, &backPressured)
            }
        } catch {
            failure = error
        }
        // The end of the stream, whatever ended it; then linger while consumers are attached.
        // After a signal: one second at most for the end-of-stream record, no lingering.
        let stopped = stopRequested
        let endDeadline = monotonicNanoseconds() &+ UInt64((stopped ? 1 : max(linger, 1)) * 1e9)
        var rounds = 0
        var endPublished = false
        while !endPublished && monotonicNanoseconds() < endDeadline {
            // As a batch: its end also publishes the producer's tail and counters, which otherwise
            // lag by up to 64 records, so that `stat` shows the final figures while pub lingers.
            endPublished = try producer.batch { try $0.publish([], type: StreamRecord.endOfStream) } == .published
            if !endPublished { producer.idle(using: fullRing, rounds: &rounds) }
        }
        let lingerEnd = monotonicNanoseconds() &+ UInt64(linger * 1e9)
        while !stopped && !stopRequested && monotonicNanoseconds() < lingerEnd && producer.activeConsumerCount > 0 {
            usleep(1000)
        }
        producer.close()
        printError(
            "shmring pub: \(key): published \(published) messages, \(bytes) bytes, back-pressured \(backPressured) times"
                + (endPublished ? "" : "; the end-of-stream record found no room (a consumer is stalled)")
                + (stopped ? "; stopped by signal \(CShmLinux_stop_signal())" : ""))
        if let failure { throw failure }
    }

    private func publishGenerated(
        _ producer: RingProducer, _ published: inout UInt64, _ bytes: inout UInt64, _ backPressured: inout UInt64
    ) throws {
        let start = monotonicNanoseconds()
        var sequence: UInt64 = 0
        while count.map({ sequence < UInt64($0) }) ?? true {
            if stopRequested { return }
            if let rate {
                // Paced from the intended send time, not from the last send (no drift).
                let due = start &+ UInt64(Double(sequence) * 1e9 / rate)
                while true {
                    let now = monotonicNanoseconds()
                    if now >= due { break }
                    if stopRequested { return }
                    if due - now > 200_000 { usleep(100) } else { CShmAtomics_pause() }
                }
            }
            var rounds = 0
            while true {
                let result = try producer.claim(length: size, type: StreamRecord.generated) { span in
                    span.withUnsafeMutableBytes {
                        GeneratedMessage.write(sequence: sequence, timestamp: monotonicNanoseconds(), into: $0)
                    }
                    return .commit
                }
                if result == .published { break }
                backPressured += 1
                if stopRequested { return }
                producer.idle(using: fullRing, rounds: &rounds)
            }
            sequence += 1
            published += 1
            bytes += UInt64(size)
        }
    }

    private func publishLines(
        _ producer: RingProducer, _ published: inout UInt64, _ bytes: inout UInt64, _ backPressured: inout UInt64
    ) throws {
        var reader = LineReader(descriptor: 0)
        while count.map({ published < UInt64($0) }) ?? true, let line = reader.next() {
            if stopRequested { return }
            guard line.count <= producer.maxMessageLength else {
                throw CommandFailure(
                    "\(key): a \(line.count)-byte line exceeds the ring's maximum message length \(producer.maxMessageLength)"
                )
            }
            var rounds = 0
            while try producer.publish(line, type: StreamRecord.raw) == .backPressured {
                backPressured += 1
                if stopRequested { return }
                producer.idle(using: fullRing, rounds: &rounds)
            }
            published += 1
            bytes += UInt64(line.count)
        }
    }
}

/// Lines of a descriptor, without their newline (a last line without one counts too).
struct LineReader {
    let descriptor: Int32
    private var buffer: [UInt8] = []
    private var start = 0
    private var finished = false

    init(descriptor: Int32) { self.descriptor = descriptor }

    mutating func next() -> [UInt8]? {
        while true {
            if let newline = buffer[start...].firstIndex(of: UInt8(ascii: "\n")) {
                let line = Array(buffer[start..<newline])
                start = newline + 1
                return line
            }
            if finished {
                guard start < buffer.count else { return nil }
                let line = Array(buffer[start...])
                start = buffer.count
                return line
            }
            if start > 0 {
                buffer.removeSubrange(0..<start)
                start = 0
            }
            var chunk = [UInt8](repeating: 0, count: 65536)
            let n = chunk.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR {
                if stopRequested { finished = true }
                continue
            }
            if n <= 0 {
                finished = true
            } else {
                buffer += chunk[0..<n]
            }
        }
    }
}
