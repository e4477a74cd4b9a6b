import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A system call failed.
///
/// Carries the name of the call and the `Errno` it returned, so that a message names both
/// ("memfd_create: Too many open files").
public struct SystemCallError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The system call or C function that failed, as in its man page.
    public var syscall: String
    /// What it returned in `errno`.
    public var errno: Errno

    public init(_ syscall: String, _ errno: Errno) {
        self.syscall = syscall
        self.errno = errno
    }

    public var description: String { "\(syscall): \(errno) (errno \(errno.rawValue))" }
}

/// Runs a C call that returns -1 and sets `errno` on failure, retrying on `EINTR`.
///
/// Nothing runs between the call and reading `errno`: the closure returns at once and `Errno`
/// is read next (the pattern of swift-nio's `System.swift`).
@inline(never)
package func systemCall<T: BinaryInteger>(_ name: String, _ body: () -> T) throws(SystemCallError) -> T {
    while true {
        let result = body()
        if result != -1 { return result }
        let error = Errno(rawValue: Glibc.errno)
        if error == .interrupted { continue }
        throw SystemCallError(name, error)
    }
}

/// Runs a C call that returns 0 or a negative errno value (liburing, our lock functions).
@inline(never)
package func negativeErrnoCall(_ name: String, _ body: () -> Int32) throws(SystemCallError) -> Int32 {
    while true {
        let result = body()
        if result >= 0 { return result }
        if result == -Errno.interrupted.rawValue { continue }
        throw SystemCallError(name, Errno(rawValue: -result))
    }
}
