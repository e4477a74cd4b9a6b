import ArgumentParser
import CShmLinux
import ShmRing
import ShmRingTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// `shmring sub KEY`: attaches to a ring and reads.
struct Sub: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Attach to the ring under KEY and read its messages.",
        discussion: """
            Ends after --count messages, at the end of the stream, when the producer goes away, or \
            on SIGINT/SIGTERM, with a one-line summary on standard error. A lossy consumer (or a \
            gating one demoted by its --lag-limit) reports every lap on standard error (how many \
            messages and ring bytes it missed, where it resumed) and goes on; laps are not \
            failures. With --verify, any corrupted message, and any gap that is not a reported \
            lap, makes the exit status 1.
            """)

    enum Policy: String, ExpressibleByArgument, CaseIterable { case gating, lossy }
    enum From: String, ExpressibleByArgument, CaseIterable { case newest, oldest }
    enum Format: String, ExpressibleByArgument, CaseIterable { case text, hex, json, none }

    @Argument(help: "The ring's key.")
    var key: String

    @Option(help: "gating (hold the producer back) or lossy (never slow it; report what is missed).")
    var policy: Policy = .gating

    @Option(
        name: .customLong("lag-limit"),
        help: ArgumentHelp(
            "Gating only: be demoted to lossy at this lag: bytes (64KiB) or a time holding the producer back (10ms).",
            valueName: "size|time"))
    var lagLimit: String?

    @Option(help: "Start at the newest message or the oldest still available.")
    var from: From = .newest

    @Option(
        help:
            "How to wait for messages: spin, yield, backoff, or block (spin about one wake-up's cost, then sleep until the producer publishes)."
    )
    var idle: String = "backoff"

    @Option(
        name: .customLong("idle-timeout"),
        help: ArgumentHelp(
            "With --idle block: the longest single sleep before looking again (10ms, 1s).", valueName: "time"))
    var idleTimeout: String = "1s"

    @Option(help: "Exit after this many messages.")
    var count: Int?

    @Flag(help: "Check the sequence and checksum of generated messages.")
    var verify = false

    @Option(help: "text, hex, json or none.")
    var format: Format = .text

    @Option(help: "The key's socket directory (default: the abstract namespace).")
    var dir: String?

    @Flag(help: "When the producer goes (or ends its stream), follow the next producer of the key.")
    var reattach = false

    @Option(
        name: .customLong("reattach-timeout"),
        help: ArgumentHelp(
            "With --reattach: how long to wait for a new producer before exiting with status 1 (default: for ever).",
            valueName: "time"))
    var reattachTimeout: String?

    func validate() throws {
        if let count, count < 0 { throw ValidationError("--count must not be negative, got \(count)") }
        if let reattachTimeout {
            guard reattach else { throw ValidationError("--reattach-timeout needs --reattach") }
            guard parseDuration(reattachTimeout) != nil else {
                throw ValidationError(
                    "--reattach-timeout \(reattachTimeout): expected a positive time up to an hour, such as 5s")
            }
        }
        guard idleStrategy(named: idle) != nil else {
            throw ValidationError("--idle \(idle): expected spin, yield, backoff or block")
        }
        guard parseDuration(idleTimeout) != nil else {
            throw ValidationError("--idle-timeout \(idleTimeout): expected a positive time up to an hour, such as 1s")
        }
        if let lagLimit {
            guard policy == .gating else {
                throw ValidationError("--lag-limit is for gating consumers, not lossy ones")
            }
            _ = try Self.parseLagLimit(lagLimit)
        }
    }

    /// `10ms`, `2s`, `500us`, `100ns` (a time), or a size such as `64KiB` or `4096` (bytes).
    static func parseLagLimit(_ text: String) throws -> LagLimit {
        if ["ms", "us", "ns", "s"].contains(where: { text.hasSuffix($0) }) {
            guard let time = parseDuration(text) else {
                throw ValidationError("--lag-limit \(text): expected a positive time up to an hour, such as 10ms")
            }
            return LagLimit(time: time)
        }
        guard let size = ByteSize(argument: text), size.bytes > 0 else {
            throw ValidationError("--lag-limit \(text): expected a size (64KiB) or a time (10ms)")
        }
        return LagLimit(bytes: size.bytes)
    }

    func run() throws {
        CShmLinux_install_stop_signals()
        let strategy = idleStrategy(named: idle, blockTimeout: parseDuration(idleTimeout)!)!
        var consumer = try RingConsumer(
            key: key, namespace: namespace(dir),
            configuration: .init(
                start: from == .oldest ? .oldest : .newest, policy: policy == .lossy ? .lossy : .gating,
                lagLimit: try lagLimit.map(Self.parseLagLimit)))
        var output = OutputBuffer()
        var state = Reading(verify: verify, format: format)
        var rounds = 0
        var ending = "count"
        let wanted = count ?? Int.max
        while state.messages < wanted {
            if stopRequested {
                ending = "signal \(CShmLinux_stop_signal())"
                break
            }
            let got = try poll(consumer, limit: wanted - state.messages, &state, &output)
            output.flush()
            if state.ended {
                ending = "end of stream"
                if reattach, state.messages < wanted {
                    ending = try follow(&consumer, &state) ?? "count"
                    if ending == "count" { continue }
                }
                break
            }
            if got > 0 {
                rounds = 0
                continue
            }
            // The consumer says when the producer went, whatever the strategy (a blocking wait at
            // once, the others within about a millisecond of idleness; the poll, once drained).
            // Then drain what it committed before going.
            if try state.producerWent || consumer.idle(using: strategy, rounds: &rounds) == .producerGone {
                state.producerWent = false
                _ = try poll(consumer, limit: wanted - state.messages, &state, &output)
                output.flush()
                ending = state.ended ? "end of stream" : "producer gone"
                if reattach, state.messages < wanted {
                    ending = try follow(&consumer, &state) ?? "count"
                    if ending == "count" {
                        rounds = 0
                        continue
                    }
                }
                break
            }
        }
        consumer.detach()
        state.addFigures(of: consumer)
        printError(
            "shmring sub: \(key): \(state.messages) messages, \(state.bytes) bytes, \(state.gaps) gaps, "
                + "\(state.lappedMessages) lapped messages (\(state.lappedBytes) bytes) in \(state.laps) laps"
                + (state.demoted ? ", demoted to lossy" : "") + (verify ? ", \(state.corrupted) corrupted" : "")
                + (state.producers > 1 ? ", \(state.producers) producers" : "")
                + "; ended by \(ending)")
        if (verify && (state.corrupted > 0 || state.gaps > 0)) || ending.hasPrefix("no new producer") {
            throw ExitCode(1)
        }
    }
}

/// One poll; a lap, a demotion or "cannot keep up" is reported on standard error, and reading
/// goes on.
private func poll(_ consumer: RingConsumer, limit: Int, _ state: inout Reading, _ output: inout OutputBuffer)
    throws(RingError) -> Int
{
    do throws(RingError) {
        return try consumer.poll(limit: limit) { bytes, info in
            if info.missedMessages > 0 {
                state.laps += 1
                output.flush()
                printError(
                    "shmring sub: \(consumer.key): lapped: missed \(info.missedMessages) messages "
                        + "(\(info.missedBytes) ring bytes); resumed at sequence \(info.sequence)")
            }
            return state.take(bytes, info, into: &output)
        }
    } catch {
        switch error.code {
        case .producerGone:
            state.producerWent = true
            return 0
        case .demoted, .cannotKeepUp:
            output.flush()
            printError("shmring sub: \(error.description)")
            return 0
        default:
            throw error
        }
    }
}

extension Sub {
    /// `--reattach`: the producer went (or ended its stream); wait for the next one under the same
    /// key (another ring: a producer that ended its stream and lingers is not followed again),
    /// saying so once on standard error, and read it from its oldest message. Returns nil once it
    /// follows one, or how the reading ended: a signal, or `--reattach-timeout` passing (the
    /// caller prints the summary and exits 1).
    func follow(_ consumer: inout RingConsumer, _ state: inout Reading) throws -> String? {
        printError("shmring sub: \(key): the producer is gone; waiting for a new one")
        let timeout = reattachTimeout.flatMap(parseDuration)
        let deadline = timeout.map { ContinuousClock.now + $0 }
        let old = consumer.segmentID
        while !stopRequested {
            if let deadline, ContinuousClock.now >= deadline { return "no new producer within \(reattachTimeout!)" }
            let slice = deadline.map { min($0 - ContinuousClock.now, .milliseconds(100)) } ?? .milliseconds(100)
            let current = consumer
            let next: RingConsumer
            do throws(RingError) {
                next = try current.reattached(timeout: max(slice, .zero))
            } catch {
                // Nobody serves the key yet, or the new producer is full of consumers: wait on.
                guard error.code == .notFound || error.code == .tooManyConsumers else { throw error }
                if error.code == .tooManyConsumers { usleep(50_000) }
                continue
            }
            if next.segmentID == old {
                // The same producer, still lingering after its end of stream: not a new one.
                // Detached again at once (it lingers while consumers are attached).
                next.detach()
                usleep(50_000)
                continue
            }
            state.addFigures(of: current)
            consumer = next
            // A new ring, a new epoch: its sequence numbers start again.
            state.startNewProducer()
            state.producers += 1
            return nil
        }
        return "signal \(CShmLinux_stop_signal())"
    }
}

/// What `sub` has read so far, and how it shows each message.
struct Reading {
    let verify: Bool
    let format: Sub.Format
    var messages = 0
    var bytes = 0
    var gaps = 0
    var corrupted = 0
    /// Laps reported (each one a resumption after missed messages).
    var laps = 0
    var ended = false
    /// The last poll reported that the producer is gone (every message it committed was read).
    var producerWent = false
    /// Producers read from (more than one with `--reattach`).
    var producers = 1
    /// What the consumers of earlier producers missed, and whether one was demoted.
    var lappedMessages: UInt64 = 0
    var lappedBytes: UInt64 = 0
    var demoted = false

    /// Adds a consumer's own figures (at the end of its producer).
    mutating func addFigures(of consumer: RingConsumer) {
        lappedMessages += consumer.lappedMessages
        lappedBytes += consumer.lappedBytes
        demoted = demoted || consumer.isDemoted
    }
    private var expected: UInt64?
    private var expectedGenerated: UInt64?

    /// A new producer's ring: its sequence numbers (and its generated messages') start again.
    mutating func startNewProducer() {
        ended = false
        expected = nil
        expectedGenerated = nil
    }

    init(verify: Bool, format: Sub.Format) {
        self.verify = verify
        self.format = format
    }

    mutating func take(_ span: RawSpan, _ info: RingRecordInfo, into output: inout OutputBuffer) -> PollAction {
        if info.type == StreamRecord.endOfStream {
            ended = true
            return .stop
        }
        // A gap is a jump in the ring's sequence numbers that no lap accounts for.
        if let expected, (info.sequence &- expected) & ((1 << 63) - 1) != info.missedMessages { gaps += 1 }
        expected = (info.sequence &+ 1) & ((1 << 63) - 1)
        messages += 1
        bytes += span.byteCount
        var generated: (sequence: UInt64, latency: UInt64)?
        if info.type == StreamRecord.generated {
            let check = span.withUnsafeBytes { GeneratedMessage.check($0) }
            if case .valid(let sequence, let timestamp) = check {
                generated = (sequence, monotonicNanoseconds() &- timestamp)
                // Out of order against the publisher's own numbering: corrupted (ring gaps are
                // counted from the ring's sequence numbers above).
                if verify, let expectedGenerated, sequence != expectedGenerated &+ info.missedMessages {
                    corrupted += 1
                }
                expectedGenerated = sequence &+ 1
            } else if verify {
                corrupted += 1
            }
        } else if verify {
            corrupted += 1  // raw lines (pub --stdin) carry nothing to verify
        }
        switch format {
        case .none:
            break
        case .text:
            if let generated {
                output.append(
                    "\(info.sequence) \(span.byteCount) bytes, message \(generated.sequence), \(generated.latency) ns\n"
                )
            } else {
                span.withUnsafeBytes { output.bytes.append(contentsOf: $0) }
                output.append("\n")
            }
        case .hex:
            output.append("\(info.sequence) ")
            output.appendHex(span)
            output.append("\n")
        case .json:
            output.append(
                "{\"sequence\": \(info.sequence), \"type\": \(info.type), \"bytes\": \(span.byteCount), \"hex\": \"")
            output.appendHex(span)
            output.append("\"")
            if let generated {
                output.append(", \"message\": \(generated.sequence), \"latency_ns\": \(generated.latency)")
            }
            output.append("}\n")
        }
        return .continue
    }
}
