import CShmLinux
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

extension FileDescriptor {
    /// Closes the descriptor and ignores the result.
    ///
    /// For clean-up paths, where the descriptor is gone whatever `close` says (Linux releases it
    /// even on EINTR and EIO) and there is no one to report to.
    package func closeIgnoringErrors() {
        _ = Glibc.close(rawValue)
    }

    /// Reopens the file behind this descriptor through `/proc/self/fd`, with other access.
    ///
    /// This is how a read-write memfd descriptor becomes a read-only one: a mapping made through
    /// the new descriptor cannot be `mprotect`ed writable (the kernel withholds `VM_MAYWRITE`).
    package func reopen(_ access: FileDescriptor.AccessMode) throws(SystemCallError) -> FileDescriptor {
        let path = "/proc/self/fd/\(rawValue)"
        let flags = access.rawValue | O_CLOEXEC
        let fd = try systemCall("open(\(path))") { Glibc.open(path, flags) }
        return FileDescriptor(rawValue: fd)
    }

    /// The access mode the descriptor was opened with.
    package func accessMode() throws(SystemCallError) -> FileDescriptor.AccessMode {
        let flags = try systemCall("fcntl(F_GETFL)") { CShmLinux_get_status_flags(rawValue) }
        return FileDescriptor.AccessMode(rawValue: flags & O_ACCMODE)
    }
}
