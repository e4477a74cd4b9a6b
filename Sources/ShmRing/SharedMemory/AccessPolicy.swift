#if canImport(Glibc)
import Glibc
#endif

/// Who may attach to a `SharedMemory` segment, and who may write it.
///
/// Checked by the creator's rendezvous server against the credentials the kernel recorded for each
/// connecting process (`SO_PEERCRED`, `SO_PEERGROUPS`): a process is admitted when its effective
/// uid is in `allowedUsers`, or its primary or a supplementary group is in `allowedGroups`. Root
/// is not special. The default admits the creator's own effective uid only.
public struct AccessPolicy: Sendable, Equatable {
    /// Who may write the segment.
    public enum Writers: Sendable, Equatable {
        /// Only the creator. The segment is sealed `F_SEAL_FUTURE_WRITE` after the creator maps it:
        /// no other mapping can ever be writable, for anyone, root included; a `.readWrite` attach
        /// is refused with `permissionDenied`. Read-only is kernel-enforced.
        case creatorOnly
        /// The creator and every admitted `.readWrite` attacher (the default, as in Qt). A
        /// `.readOnly` attachment is then mapped through a read-only descriptor, but its process
        /// could reopen the memfd read-write (a memfd is mode 0777): read-only is a promise of this
        /// API against mistakes, not a security boundary.
        case attachers
    }

    /// Who may write. Default: `.attachers`.
    public var writers: Writers
    /// Effective uids admitted. Default: the creator's.
    public var allowedUsers: Set<uid_t>
    /// Groups admitted (primary or supplementary). Default: none.
    public var allowedGroups: Set<gid_t>

    /// The default policy: the creator's own user, read-write attachers allowed.
    public init() {
        writers = .attachers
        allowedUsers = [geteuid()]
        allowedGroups = []
    }

    /// Whether a process with these credentials is admitted.
    package func admits(_ credentials: PeerCredentials) -> Bool {
        if allowedUsers.contains(credentials.uid) { return true }
        if allowedGroups.contains(credentials.gid) { return true }
        return credentials.groups.contains { allowedGroups.contains($0) }
    }
}

/// How a process maps a segment.
public enum AccessMode: Sendable, Equatable {
    case readOnly
    case readWrite
}
