import CShmLinux
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Who is at the other end of a connected Unix socket, as the kernel recorded it at `connect`.
package struct PeerCredentials: Equatable, Sendable {
    package var pid: pid_t
    package var uid: uid_t
    package var gid: gid_t
    /// Supplementary groups (`SO_PEERGROUPS`).
    package var groups: [gid_t]

    /// Reads `SO_PEERCRED` and `SO_PEERGROUPS` of `socket`.
    package static func of(_ socket: FileDescriptor) throws(SystemCallError) -> PeerCredentials {
        var pid: pid_t = 0
        var uid: uid_t = 0
        var gid: gid_t = 0
        _ = try systemCall("getsockopt(SO_PEERCRED)") { CShmLinux_peer_credentials(socket.rawValue, &pid, &uid, &gid) }
        var groups = [gid_t](repeating: 0, count: 64)
        var count: Int32 = 0
        while true {
            let capacity = Int32(groups.count)
            _ = try systemCall("getsockopt(SO_PEERGROUPS)") {
                CShmLinux_peer_groups(socket.rawValue, &groups, capacity, &count)
            }
            if count <= capacity { break }
            groups = [gid_t](repeating: 0, count: Int(count))
        }
        return PeerCredentials(pid: pid, uid: uid, gid: gid, groups: Array(groups.prefix(Int(count))))
    }

    /// A pidfd of the peer (`SO_PEERPIDFD`, kernel 6.5+), close-on-exec, owned by the caller.
    package static func pidFD(of socket: FileDescriptor) throws(SystemCallError) -> FileDescriptor {
        FileDescriptor(rawValue: try systemCall("getsockopt(SO_PEERPIDFD)") { CShmLinux_peer_pidfd(socket.rawValue) })
    }
}

/// `pidfd_open(pid, 0)`: a descriptor that becomes readable when the process exits.
package func openPidFD(_ pid: pid_t) throws(SystemCallError) -> FileDescriptor {
    FileDescriptor(rawValue: try systemCall("pidfd_open") { CShmLinux_pidfd_open(pid, 0) })
}
