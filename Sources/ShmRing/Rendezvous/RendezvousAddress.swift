import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Where a key's rendezvous socket lives.
public enum KeyNamespace: Sendable, Hashable {
    /// The Linux abstract socket namespace (the default): no file, nothing left behind after a
    /// crash, visible to every process in the same network namespace (the credential checks on both
    /// sides are what keep strangers out).
    case abstract
    /// A socket file `DIRECTORY/KEY.sock`, guarded by a lock file `DIRECTORY/KEY.lock` that the
    /// live creator holds (`flock`), so two creators never unlink each other's socket and a stale
    /// socket of a crashed creator is cleared by the next one (or by `SharedMemory.remove`).
    /// Directory permissions add a file-system access check on top of the credential checks.
    case directory(String)
}

/// A validated key and where its socket is.
package struct RendezvousAddress: Sendable, Hashable {
    package let key: String
    package let namespace: KeyNamespace

    /// The grammar of keys: `[A-Za-z0-9._-]{1,100}`.
    package static let maximumKeyLength = 100

    /// The abstract name is this prefix and the key (at most 5 + 100 of the 107 bytes Linux allows).
    package static let abstractPrefix = "shmr/"

    package init(key: String, namespace: KeyNamespace) throws(RendezvousError) {
        let bytes = Array(key.utf8)
        guard !bytes.isEmpty, bytes.count <= Self.maximumKeyLength else {
            throw .invalidKey(key, "a key has 1 to \(Self.maximumKeyLength) characters, this one has \(bytes.count)")
        }
        for byte in bytes {
            let allowed =
                (byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "z"))
                || (byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z"))
                || (byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9"))
                || byte == UInt8(ascii: ".") || byte == UInt8(ascii: "_") || byte == UInt8(ascii: "-")
            guard allowed else {
                throw .invalidKey(key, "a key may hold only letters, digits, '.', '_' and '-' ([A-Za-z0-9._-]{1,100})")
            }
        }
        if case .directory(let directory) = namespace {
            guard !directory.isEmpty else { throw .invalidKey(key, "the key directory is empty") }
            let path = "\(directory)/\(key).sock"
            guard path.utf8.count < 108 else {
                throw .invalidKey(key, "the socket path \(path) is longer than the 107 bytes Linux allows")
            }
        }
        self.key = key
        self.namespace = namespace
    }

    /// The socket file for `.directory`, nil for `.abstract`.
    package var socketPath: String? {
        if case .directory(let directory) = namespace { return "\(directory)/\(key).sock" }
        return nil
    }

    /// The lock file for `.directory`, nil for `.abstract`.
    package var lockPath: String? {
        if case .directory(let directory) = namespace { return "\(directory)/\(key).lock" }
        return nil
    }

    /// A human-readable name of the socket.
    package var displayName: String { socketPath ?? "@\(Self.abstractPrefix)\(key)" }

    /// Calls `body` with the `sockaddr_un` of this address and its length.
    package func withSocketAddress<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let pathBytes: [UInt8]
        let isAbstract: Bool
        if let socketPath {
            pathBytes = Array(socketPath.utf8)
            isAbstract = false
        } else {
            pathBytes = [0] + Array((Self.abstractPrefix + key).utf8)
            isAbstract = true
        }
        let length = withUnsafeMutableBytes(of: &address.sun_path) { buffer in
            for (index, byte) in pathBytes.enumerated() { buffer[index] = byte }
            // Abstract names are exactly as long as given; paths are NUL-terminated.
            return MemoryLayout<sa_family_t>.size + pathBytes.count + (isAbstract ? 0 : 1)
        }
        return withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(length)) }
        }
    }
}

/// Why the rendezvous failed.
package enum RendezvousError: Error, Equatable, CustomStringConvertible {
    case invalidKey(String, String)
    /// A live creator serves this key already.
    case alreadyExists(String)
    /// Nobody serves this key.
    case notFound(String)
    /// A credential check refused (this side's or the other's).
    case permissionDenied(String)
    /// Read-write access asked of a segment only its creator writes.
    case readOnlySegment
    /// The other side does not speak a compatible protocol version.
    case incompatibleVersion(String)
    /// The other side broke the protocol (garbage, wrong descriptor count, ...).
    case protocolViolation(String)
    /// The reply's descriptors did not all fit in this process's descriptor table (MSG_CTRUNC
    /// under a low RLIMIT_NOFILE): the ones that arrived were closed.
    case descriptorTableFull(received: Int)
    /// The key serves another kind of segment (a ring, not shared memory).
    case wrongKind(RendezvousProtocol.SegmentKind)
    /// No reply within the handshake timeout.
    case timedOut(Duration)
    /// The creator could not serve the request (errno from the reply).
    case serverError(Errno)
    /// Every ring consumer slot is taken.
    case noFreeSlot
    /// The ring's producer refuses gating consumers.
    case gatingRefused
    /// A system call failed.
    case system(SystemCallError)

    package var description: String {
        switch self {
        case .invalidKey(let key, let why): "invalid key \"\(key)\": \(why)"
        case .alreadyExists(let what): what
        case .notFound(let what): what
        case .permissionDenied(let what): what
        case .readOnlySegment: "only the creator may write this segment; attach read-only"
        case .incompatibleVersion(let what): what
        case .protocolViolation(let what): "rendezvous protocol violation: \(what)"
        case .descriptorTableFull(let received):
            "the reply's descriptors did not fit in this process's descriptor table (only \(received) arrived; "
                + "RLIMIT_NOFILE or EMFILE): close descriptors or raise the limit"
        case .wrongKind(let kind): "the key serves a \(kind == .ring ? "ring" : "shared-memory segment")"
        case .timedOut(let timeout): "no answer from the creator within \(timeout)"
        case .serverError(let errno): "the creator could not serve the request: \(errno)"
        case .noFreeSlot: "every consumer slot of the ring is taken"
        case .gatingRefused: "the producer refuses gating consumers"
        case .system(let error): error.description
        }
    }
}
