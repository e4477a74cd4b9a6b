import CShmLinux
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Binding the key's socket and taking its lock file: what makes a creator the only one.
extension RendezvousServer {
    static func bindListener(_ address: RendezvousAddress, backlog: Int32) throws(RendezvousError)
        -> FileDescriptor
    {
        let fd: Int32
        do throws(SystemCallError) {
            fd = try systemCall("socket") {
                Glibc.socket(
                    AF_UNIX, Int32(SOCK_SEQPACKET.rawValue | SOCK_CLOEXEC.rawValue | SOCK_NONBLOCK.rawValue), 0)
            }
        } catch {
            throw .system(error)
        }
        let socket = FileDescriptor(rawValue: fd)
        let bound = address.withSocketAddress { Glibc.bind(fd, $0, $1) }
        if bound != 0 {
            let error = Errno(rawValue: errno)
            socket.closeIgnoringErrors()
            if error == .addressInUse {
                throw .alreadyExists("a creator already serves \(address.key) (\(address.displayName) is in use)")
            }
            throw .system(SystemCallError("bind(\(address.displayName))", error))
        }
        if address.socketPath != nil {
            // The file's mode is only a first gate; the credential check is the real one.
            _ = address.socketPath.map { chmod($0, 0o666) }
        }
        guard listen(fd, backlog) == 0 else {
            let error = Errno(rawValue: errno)
            socket.closeIgnoringErrors()
            throw .system(SystemCallError("listen", error))
        }
        return socket
    }

    /// Takes the key's lock file (`flock(LOCK_EX | LOCK_NB)`), making sure the path still names the
    /// locked file (a creator that was detaching may have unlinked it in between).
    static func acquireLockFile(_ path: String, address: RendezvousAddress) throws(RendezvousError) -> FileDescriptor {
        for _ in 0..<16 {
            let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
            guard fd >= 0 else { throw .system(SystemCallError("open(\(path))", Errno(rawValue: errno))) }
            let file = FileDescriptor(rawValue: fd)
            if flock(fd, LOCK_EX | LOCK_NB) != 0 {
                let error = Errno(rawValue: errno)
                file.closeIgnoringErrors()
                if error == .wouldBlock {
                    throw .alreadyExists("a live creator holds \(path): \(address.key) is in use")
                }
                throw .system(SystemCallError("flock(\(path))", error))
            }
            var opened = stat()
            var named = stat()
            if fstat(fd, &opened) == 0, stat(path, &named) == 0, opened.st_ino == named.st_ino,
                opened.st_dev == named.st_dev
            {
                return file
            }
            file.closeIgnoringErrors()  // unlinked under us: try the new file
        }
        throw .alreadyExists("\(path) keeps changing: another creator is racing for \(address.key)")
    }
}
