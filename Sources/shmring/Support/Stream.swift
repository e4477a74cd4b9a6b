import CShmAtomics
import CShmLinux
import ShmRing
import ShmRingTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// The record type tags `shmring pub` writes and `shmring sub` reads (docs/cli.md).
enum StreamRecord {
    /// A `GeneratedMessage`: sequence, send timestamp, checksum, filler.
    static let generated: UInt32 = 1
    /// One line of `pub --stdin`, as given (without its newline); `sub --verify` refuses it.
    static let raw: UInt32 = 2
    /// The end of the stream: the publisher stopped (count reached, end of input, SIGINT/SIGTERM).
    static let endOfStream: UInt32 = 0xFFFF_FFFF
}

/// CLOCK_MONOTONIC in nanoseconds (vDSO: no system call).
func monotonicNanoseconds() -> UInt64 {
    var time = timespec()
    clock_gettime(CLOCK_MONOTONIC, &time)
    return UInt64(time.tv_sec) &* 1_000_000_000 &+ UInt64(time.tv_nsec)
}

/// The key's namespace from `--dir`.
func namespace(_ directory: String?) -> KeyNamespace {
    directory.map { .directory($0) } ?? .abstract
}

/// Whether SIGINT or SIGTERM arrived (after `CShmLinux_install_stop_signals`).
var stopRequested: Bool { CShmLinux_stop_signal() != 0 }

/// The library's idle strategy named by `--idle`; nil for a name it does not know. `block` waits
/// at most `blockTimeout` at a time before it looks again.
func idleStrategy(named name: String, blockTimeout: Duration = .seconds(1)) -> IdleStrategy? {
    switch name {
    case "spin": .spin
    case "yield": .yield
    case "backoff": .backoff
    case "block": .block(timeout: blockTimeout)
    default: nil
    }
}

/// `10ms`, `2s`, `500us`, `100ns`: a positive time up to an hour; nil otherwise.
func parseDuration(_ text: String) -> Duration? {
    for (suffix, unit) in [("ms", 1_000_000.0), ("us", 1_000.0), ("ns", 1.0), ("s", 1_000_000_000.0)]
    where text.hasSuffix(suffix) {
        guard let value = Double(text.dropLast(suffix.count)), value.isFinite, value > 0, value * unit <= 3.6e12
        else { return nil }
        return .nanoseconds(Int64(max(1, value * unit)))
    }
    return nil
}

/// A buffered writer for standard output, flushed per poll batch.
struct OutputBuffer {
    var bytes: [UInt8] = []

    mutating func append(_ text: String) { bytes.append(contentsOf: text.utf8) }

    mutating func appendHex(_ span: RawSpan) {
        let digits = Array("0123456789abcdef".utf8)
        span.withUnsafeBytes { buffer in
            for byte in buffer {
                bytes.append(digits[Int(byte >> 4)])
                bytes.append(digits[Int(byte & 15)])
            }
        }
    }

    mutating func flush() {
        guard !bytes.isEmpty else { return }
        bytes.withUnsafeBytes { writeOut($0) }
        bytes.removeAll(keepingCapacity: true)
    }
}

/// A JSON string literal.
func jsonString(_ text: String) -> String {
    var out = "\""
    for scalar in text.unicodeScalars {
        switch scalar {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        default:
            if scalar.value < 0x20 {
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
    }
    return out + "\""
}
