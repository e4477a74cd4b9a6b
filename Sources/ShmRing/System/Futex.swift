import CShmLinux
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Futex wait and wake on 32-bit words in shared memory.
///
/// Shared (not `FUTEX_PRIVATE_FLAG`) so that processes mapping the same memfd page wait on the same
/// futex; `FUTEX_WAKE` needs only read access to the page, so a producer can wake consumers
/// through its own mapping and consumers can wait on a read-only one.
package enum Futex {
    /// How a wait ended.
    package enum WaitResult: Equatable, Sendable {
        /// A wake-up arrived (or a spurious one: re-check the word).
        case woken
        /// The word did not hold `expected` when the kernel looked (EAGAIN).
        case valueChanged
        /// The timeout passed.
        case timedOut
        /// A signal interrupted the wait.
        case interrupted
    }

    /// Sleeps while `*word == expected`, at most `timeout` (nil: no limit).
    package static func wait(
        on word: UnsafeMutablePointer<UInt32>, expected: UInt32, timeout: Duration? = nil
    ) throws(SystemCallError) -> WaitResult {
        var spec = timespec()
        if let nanoseconds = timeout?.clampedNanoseconds {
            spec.tv_sec = Int(nanoseconds / 1_000_000_000)
            spec.tv_nsec = Int(nanoseconds % 1_000_000_000)
        }
        let rc =
            timeout == nil
            ? CShmLinux_futex_wait(word, expected, nil, false)
            : CShmLinux_futex_wait(word, expected, &spec, false)
        if rc == 0 { return .woken }
        switch Errno(rawValue: errno) {
        case .resourceTemporarilyUnavailable: return .valueChanged
        case .timedOut: return .timedOut
        case .interrupted: return .interrupted
        case let error: throw SystemCallError("futex(FUTEX_WAIT)", error)
        }
    }

    /// Wakes up to `count` waiters on `word`; returns how many were woken.
    @discardableResult
    package static func wake(
        _ word: UnsafeMutablePointer<UInt32>, count: Int32 = Int32.max
    ) throws(SystemCallError) -> Int {
        Int(try systemCall("futex(FUTEX_WAKE)") { CShmLinux_futex_wake(word, count, false) })
    }
}
