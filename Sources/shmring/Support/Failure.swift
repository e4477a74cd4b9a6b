import ArgumentParser
import CShmLinux
import ShmRing

#if canImport(Glibc)
import Glibc
#endif

/// A failure the command reports in one line, naming the key, with a non-zero status.
struct CommandFailure: Error, CustomStringConvertible {
    var message: String
    var status: Int32 = 1

    init(_ message: String, status: Int32 = 1) {
        self.message = message
        self.status = status
    }

    init(_ error: RingError) { self.init(error.description) }
    init(_ error: SharedMemoryError) { self.init(error.description) }

    var description: String { message }
}

/// Writes one line to standard error (or text without a line end, for a progress line).
func printError(_ line: String, newline: Bool = true) {
    let bytes = Array((newline ? line + "\n" : line).utf8)
    _ = bytes.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
}

/// Writes to standard output without buffering (the consumer's output must not lag behind).
func writeOut(_ bytes: UnsafeRawBufferPointer) {
    var offset = 0
    while offset < bytes.count {
        let n = write(1, bytes.baseAddress! + offset, bytes.count - offset)
        if n < 0 && errno == EINTR {
            if CShmLinux_stop_signal() != 0 { return }  // a stuck reader of our output must not keep us
            continue
        }
        if n <= 0 { return }
        offset += n
    }
}

func writeOut(_ text: String) {
    var text = text
    text.withUTF8 { writeOut(UnsafeRawBufferPointer($0)) }
}
