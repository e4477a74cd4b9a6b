import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The rendezvous of a ring, as consumers and observers use it: a request to the producer of
/// `key`, failures as `RingError`, and a reply that must come from a ring.
enum RingRendezvous {
    static func connect(
        key: String, namespace: KeyNamespace, request: RendezvousProtocol.Request, trustedCreators: Set<uid_t>,
        timeout: Duration
    ) throws(RingError) -> RendezvousConnection {
        let connection: RendezvousConnection
        do {
            connection = try RendezvousConnection.connect(
                to: try RendezvousAddress(key: key, namespace: namespace), request: request,
                trustedUsers: trustedCreators, timeout: timeout)
        } catch {
            throw RingError(error, key: key)
        }
        guard connection.reply.segmentKind == .ring else {
            throw RingError(.incompatibleLayout, key: key, "\(key) is a shared-memory segment, not a ring")
        }
        return connection
    }
}
