import ArgumentParser
import CShmLinux
import ShmRing

#if canImport(Glibc)
import Glibc
#endif

/// `shmring sub KEY`: attaches to a ring and reads.
struct Sub: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Attach to the ring under KEY and read its messages.",
        discussion: """
            Ends after --count messages, at the end of the stream, when the producer goes away, or \
            on SIGINT/SIGTERM, with a one-line summary on standard error. With --verify, any \
            corrupted message (and any gap, for a gating consumer) makes the exit status 1.
            """)

    enum Policy: String, ExpressibleByArgument, CaseIterable { case gating, lossy }
    enum From: String, ExpressibleByArgument, CaseIterable { case newest, oldest }
    enum Format: String, ExpressibleByArgument, CaseIterable { case text, hex, json, none }

    @Argument(help: "The ring's key.")
    var key: String

    @Option(help: "gating (hold the producer back) or lossy (arrives with lossy consumers).")
    var policy: Policy = .gating

    @Option(help: "Start at the newest message or the oldest still available.")
    var from: From = .newest

    @Option(help: "How to wait for messages: spin, yield, backoff, block (block arrives with the wake-up path).")
    var idle: String = "backoff"

    @Option(help: "Exit after this many messages.")
    var count: Int?

    @Flag(help: "Check the sequence and checksum of generated messages.")
    var verify = false

    @Option(help: "text, hex, json or none.")
    var format: Format = .text

    @Option(help: "The key's socket directory (default: the abstract namespace).")
    var dir: String?

    func validate() throws {
        if let count, count < 0 { throw ValidationError("--count must not be negative, got \(count)") }
        guard let strategy = IdleStrategy(rawValue: idle) else {
            throw ValidationError("--idle \(idle): expected spin, yield, backoff or block")
        }
        if strategy == .block {
            throw ValidationError("--idle block arrives with the wake-up path; use spin, yield or backoff")
        }
        if policy == .lossy {
            throw ValidationError("--policy lossy arrives with lossy consumers (\"The ring 2/2\"); use gating")
        }
    }

    func run() throws {
        CShmLinux_install_stop_signals()
        let strategy = IdleStrategy(rawValue: idle)!
        let consumer = try RingConsumer(key: key, from: from == .oldest ? .oldest : .newest, namespace: namespace(dir))
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
            let got = try consumer.poll(limit: wanted - state.messages) { bytes, info in
                state.take(bytes, info, into: &output)
            }
            output.flush()
            if state.ended {
                ending = "end of stream"
                break
            }
            if got > 0 {
                rounds = 0
                continue
            }
            strategy.idle(&rounds)
            // About every millisecond of idleness (or every 256 rounds of a spinning wait): is the
            // producer still there? Then drain what it committed before going.
            if rounds % 256 == 255 && !consumer.isProducerAlive {
                _ = try consumer.poll(limit: wanted - state.messages) { bytes, info in
                    state.take(bytes, info, into: &output)
                }
                output.flush()
                ending = state.ended ? "end of stream" : "producer gone"
                break
            }
        }
        consumer.detach()
        printError(
            "shmring sub: \(key): \(state.messages) messages, \(state.bytes) bytes, \(state.gaps) gaps, "
                + "0 lapped messages (0 bytes)" + (verify ? ", \(state.corrupted) corrupted" : "")
                + "; ended by \(ending)")
        if verify && (state.corrupted > 0 || state.gaps > 0) {
            throw ExitCode(1)
        }
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
    var ended = false
    private var expected: UInt64?
    private var expectedGenerated: UInt64?

    init(verify: Bool, format: Sub.Format) {
        self.verify = verify
        self.format = format
    }

    mutating func take(_ span: RawSpan, _ info: RingRecordInfo, into output: inout OutputBuffer) -> PollAction {
        if info.type == StreamRecord.endOfStream {
            ended = true
            return .stop
        }
        if let expected, info.sequence != expected { gaps += 1 }
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
                if verify, let expectedGenerated, sequence != expectedGenerated { corrupted += 1 }
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
