import CShmLinux
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// An attacher's side of the rendezvous: one handshake, then the connection stays open.
package struct RendezvousConnection {
    /// The connection, kept open as the liveness channel (its hang-up means the creator detached
    /// or died). Owned by the caller.
    package var socket: FileDescriptor
    package var reply: RendezvousProtocol.Reply
    /// The descriptors of the reply, in the order of `reply.roles`. Owned by the caller.
    package var descriptors: [FileDescriptor]
    /// Who serves the key, as the kernel recorded it.
    package var server: PeerCredentials

    /// The descriptor with `role`, if the reply has one.
    package func descriptor(_ role: RendezvousProtocol.DescriptorRole) -> FileDescriptor? {
        reply.roles.firstIndex(of: role).map { descriptors[$0] }
    }

    /// Closes the socket and every descriptor.
    package func close() {
        socket.closeIgnoringErrors()
        for descriptor in descriptors { descriptor.closeIgnoringErrors() }
    }

    /// Connects to the creator of `address`, checks that it runs as one of `trustedUsers`, sends
    /// `request`, and waits at most `timeout` for the reply.
    ///
    /// A reply whose status is not `ok` becomes the matching error; on any error nothing stays open.
    package static func connect(
        to address: RendezvousAddress, request: RendezvousProtocol.Request, trustedUsers: Set<uid_t>,
        timeout: Duration = .seconds(5)
    ) throws(RendezvousError) -> RendezvousConnection {
        let fd: Int32
        do throws(SystemCallError) {
            fd = try systemCall("socket") {
                Glibc.socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue | SOCK_CLOEXEC.rawValue), 0)
            }
        } catch {
            throw .system(error)
        }
        let socket = FileDescriptor(rawValue: fd)
        do throws(RendezvousError) {
            var rc: Int32
            repeat {
                rc = address.withSocketAddress { Glibc.connect(fd, $0, $1) }
            } while rc != 0 && errno == EINTR
            if rc != 0 {
                let error = Errno(rawValue: errno)
                switch error {
                case .noSuchFileOrDirectory, .connectionRefused:
                    throw RendezvousError.notFound("nobody serves \(address.key) (\(address.displayName): \(error))")
                case .permissionDenied:
                    throw RendezvousError.permissionDenied(
                        "no permission to connect to \(address.displayName) for \(address.key)")
                default:
                    throw RendezvousError.system(SystemCallError("connect(\(address.displayName))", error))
                }
            }
            // Check the server before telling it anything or trusting anything it sends: a process
            // of another user that squats the key must not feed us forged memory.
            let server: PeerCredentials
            do { server = try PeerCredentials.of(socket) } catch { throw RendezvousError.system(error) }
            guard trustedUsers.contains(server.uid) else {
                throw RendezvousError.permissionDenied(
                    "\(address.key) is served by uid \(server.uid) (pid \(server.pid)), which is not a trusted creator "
                        + "(trusted: \(trustedUsers.sorted().map(String.init).joined(separator: ", ")))")
            }
            do {
                try DescriptorPassing.send(request.encoded(), on: socket)
            } catch {
                if error.errno == .brokenPipe || error.errno == .connectionReset {
                    throw RendezvousError.notFound("the creator of \(address.key) went away during the handshake")
                }
                throw RendezvousError.system(error)
            }
            let message = try receiveReply(on: socket, key: address.key, timeout: timeout)
            let reply: RendezvousProtocol.Reply
            do {
                reply = try RendezvousProtocol.Reply.decode(message.payload)
            } catch {
                for descriptor in message.descriptors { descriptor.closeIgnoringErrors() }
                throw RendezvousError.protocolViolation("the reply for \(address.key) does not decode: \(error)")
            }
            do throws(RendezvousError) {
                try check(reply, descriptorCount: message.descriptors.count, key: address.key)
            } catch {
                for descriptor in message.descriptors { descriptor.closeIgnoringErrors() }
                throw error
            }
            return RendezvousConnection(socket: socket, reply: reply, descriptors: message.descriptors, server: server)
        } catch {
            socket.closeIgnoringErrors()
            throw error
        }
    }

    private static func receiveReply(
        on socket: FileDescriptor, key: String, timeout: Duration
    ) throws(RendezvousError) -> ReceivedMessage {
        let deadline = ContinuousClock.now + timeout
        while true {
            let remaining = deadline - ContinuousClock.now
            guard remaining > .zero else { throw .timedOut(timeout) }
            var entry = pollfd(fd: socket.rawValue, events: Int16(POLLIN), revents: 0)
            let rc = poll(&entry, 1, remaining.pollMilliseconds)
            if rc < 0 && errno == EINTR { continue }
            if rc == 0 { continue }  // the deadline check above ends it
            do {
                return try DescriptorPassing.receive(
                    on: socket, capacity: RendezvousProtocol.maximumReplyLength,
                    maximumDescriptors: RendezvousProtocol.maximumDescriptors, nonBlocking: true)
            } catch {
                switch error {
                case .system(let system) where system.errno == .resourceTemporarilyUnavailable: continue
                case .peerClosed, .system:
                    throw .notFound("the creator of \(key) closed the connection without a reply")
                case .payloadTruncated, .descriptorsTruncated:
                    throw .protocolViolation("the reply for \(key): \(error)")
                }
            }
        }
    }

    private static func check(
        _ reply: RendezvousProtocol.Reply, descriptorCount: Int, key: String
    ) throws(RendezvousError) {
        guard RendezvousProtocol.isCompatible(version: reply.version, minimum: reply.minimumCompatibleVersion) else {
            throw .incompatibleVersion(
                "the creator of \(key) speaks rendezvous protocol \(reply.version) (accepting \(reply.minimumCompatibleVersion) and later); "
                    + "this build speaks \(RendezvousProtocol.version) (accepting \(RendezvousProtocol.minimumCompatibleVersion))"
            )
        }
        switch reply.status {
        case .ok: break
        case .permissionDenied:
            throw .permissionDenied("the creator of \(key) does not admit this user (uid \(geteuid()))")
        case .readOnlySegment: throw .readOnlySegment
        case .wrongKind: throw .wrongKind(reply.segmentKind)
        case .unsupportedVersion:
            throw .incompatibleVersion(
                "the creator of \(key) does not accept rendezvous protocol \(RendezvousProtocol.version)")
        case .badRequest: throw .protocolViolation("the creator of \(key) did not understand the request")
        case .serverError: throw .serverError(Errno(rawValue: reply.errno))
        }
        guard reply.roles.count == descriptorCount else {
            throw .protocolViolation("the reply names \(reply.roles.count) descriptors but carries \(descriptorCount)")
        }
    }
}
