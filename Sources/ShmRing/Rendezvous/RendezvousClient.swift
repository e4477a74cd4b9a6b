import CShmLinux
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// An attacher's side of the rendezvous: one handshake, then the connection stays open.
///
/// It owns the socket and every descriptor of the reply until they are handed on (`takeSocket`,
/// `take`): whatever is still here when the connection ends is closed then, once. (Ownership
/// spelled out by hand closed one socket twice on a failure path.)
package struct RendezvousConnection: ~Copyable {
    package let reply: RendezvousProtocol.Reply
    /// Who serves the key, as the kernel recorded it.
    package let server: PeerCredentials
    /// The connection, kept open as the liveness channel (its hang-up means the creator detached
    /// or died); nil once handed on.
    private var socket: FileDescriptor?
    /// The descriptors of the reply, in the order of `reply.roles`; nil once handed on.
    private var descriptors: [FileDescriptor?]

    init(
        socket: FileDescriptor, reply: RendezvousProtocol.Reply, descriptors: [FileDescriptor], server: PeerCredentials
    ) {
        self.socket = socket
        self.reply = reply
        self.descriptors = descriptors
        self.server = server
    }

    deinit {
        socket?.closeIgnoringErrors()
        for case let descriptor? in descriptors { descriptor.closeIgnoringErrors() }
    }

    /// Hands the socket on: the caller owns it from now on.
    package mutating func takeSocket() -> FileDescriptor {
        guard let socket else { preconditionFailure("the rendezvous socket was handed on already") }
        self.socket = nil
        return socket
    }

    /// Hands on the first descriptor of the reply with `role` that is still here: the caller owns
    /// it from now on. Nil if there is none.
    package mutating func take(_ role: RendezvousProtocol.DescriptorRole) -> FileDescriptor? {
        guard let index = reply.roles.indices.first(where: { reply.roles[$0] == role && descriptors[$0] != nil })
        else { return nil }
        defer { descriptors[index] = nil }
        return descriptors[index]
    }

    /// Connects to the creator of `address`, checks that it runs as one of `trustedUsers`, sends
    /// `request`, and waits at most `timeout` for the reply.
    ///
    /// A reply whose status is not `ok` becomes the matching error; on any error nothing stays open.
    package static func connect(
        to address: RendezvousAddress, request: RendezvousProtocol.Request, trustedUsers: Set<uid_t>,
        timeout: Duration = .seconds(5)
    ) throws(RendezvousError) -> RendezvousConnection {
        let socket = try connectedSocket(to: address, timeout: timeout)
        do throws(RendezvousError) {
            // Check the server before telling it anything or trusting anything it sends: a process
            // of another user that squats the key must not feed us forged memory.
            let server: PeerCredentials
            do { server = try PeerCredentials.of(socket) } catch { throw RendezvousError.system(error) }
            guard trustedUsers.contains(server.uid) else {
                throw RendezvousError.permissionDenied(
                    "\(address.key) is served by uid \(server.uid) (pid \(server.pid)), which is not a trusted creator "
                        + "(trusted: \(trustedUsers.sorted().map(String.init).joined(separator: ", ")))")
            }
            var message: ReceivedMessage
            do {
                try DescriptorPassing.send(request.encoded(), on: socket)
                message = try receiveReply(on: socket, key: address.key, timeout: timeout)
            } catch let error as SystemCallError where error.errno == .brokenPipe || error.errno == .connectionReset {
                // The server may have answered at once (a refusal at accept) and closed: its reply
                // is still queued for us.
                guard let queued = try? receiveReply(on: socket, key: address.key, timeout: .zero) else {
                    throw RendezvousError.notFound("the creator of \(address.key) went away during the handshake")
                }
                message = queued
            } catch let error as SystemCallError {
                throw RendezvousError.system(error)
            } catch let error as RendezvousError {
                throw error
            } catch {
                throw RendezvousError.protocolViolation("\(error)")
            }
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

    /// A socket connected to `address`'s server, within `timeout`.
    ///
    /// A Unix-socket `connect` blocks while the listener's backlog is full (a squatter that never
    /// accepts, or a server backing off on EMFILE); `SO_SNDTIMEO` bounds that wait (Linux honours
    /// it for `connect` on Unix sockets, failing with EAGAIN).
    package static func connectedSocket(
        to address: RendezvousAddress, timeout: Duration
    ) throws(RendezvousError) -> FileDescriptor {
        let fd: Int32
        do throws(SystemCallError) {
            fd = try systemCall("socket") {
                Glibc.socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue | SOCK_CLOEXEC.rawValue), 0)
            }
        } catch {
            throw .system(error)
        }
        let socket = FileDescriptor(rawValue: fd)
        let nanoseconds = max(1_000_000, timeout.clampedNanoseconds)
        var limit = timeval(tv_sec: Int(nanoseconds / 1_000_000_000), tv_usec: Int(nanoseconds % 1_000_000_000 / 1000))
        guard setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size)) == 0 else {
            let error = Errno(rawValue: errno)
            socket.closeIgnoringErrors()
            throw .system(SystemCallError("setsockopt(SO_SNDTIMEO)", error))
        }
        let deadline = ContinuousClock.now + timeout
        while true {
            if address.withSocketAddress({ Glibc.connect(fd, $0, $1) }) == 0 { return socket }
            let error = Errno(rawValue: errno)
            // EINTR: a signal interrupted the wait; go on while time remains.
            if error == .interrupted && ContinuousClock.now < deadline { continue }
            socket.closeIgnoringErrors()
            switch error {
            case .noSuchFileOrDirectory, .connectionRefused:
                throw .notFound("nobody serves \(address.key) (\(address.displayName): \(error))")
            case .permissionDenied:
                throw .permissionDenied("no permission to connect to \(address.displayName) for \(address.key)")
            case .resourceTemporarilyUnavailable, .interrupted:
                throw .timedOut(timeout)
            default:
                throw .system(SystemCallError("connect(\(address.displayName))", error))
            }
        }
    }

    /// The reply: whatever is queued now, or what arrives within `timeout`.
    private static func receiveReply(
        on socket: FileDescriptor, key: String, timeout: Duration
    ) throws(RendezvousError) -> ReceivedMessage {
        let deadline = ContinuousClock.now + timeout
        while true {
            do {
                return try DescriptorPassing.receive(
                    on: socket, capacity: RendezvousProtocol.maximumReplyLength,
                    maximumDescriptors: RendezvousProtocol.maximumDescriptors, nonBlocking: true)
            } catch {
                switch error {
                case .system(let system) where system.errno == .resourceTemporarilyUnavailable: break
                case .system(let system) where system.errno == .connectionReset:
                    // The server closed with our request unread (a refusal at accept): Linux
                    // reports ECONNRESET once, and the reply it sent before is still queued (the
                    // next round reads it, within the deadline).
                    break
                case .peerClosed, .system:
                    throw .notFound("the creator of \(key) closed the connection without a reply")
                case .descriptorsTruncated(let received, _):
                    // The server sends at most the kernel's SCM_MAX_FD, which this receive has room
                    // for: cut off here means this process's descriptor table is full.
                    throw .descriptorTableFull(received: received)
                case .payloadTruncated:
                    throw .protocolViolation("the reply for \(key): \(error)")
                }
            }
            let remaining = deadline - ContinuousClock.now
            guard remaining > .zero else { throw .timedOut(timeout) }
            var entry = pollfd(fd: socket.rawValue, events: Int16(POLLIN), revents: 0)
            _ = poll(&entry, 1, remaining.pollMilliseconds)  // EINTR or timeout: the loop decides
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
        case .noFreeSlot: throw .noFreeSlot
        case .gatingRefused: throw .gatingRefused
        }
        guard reply.roles.count == descriptorCount else {
            throw .protocolViolation("the reply names \(reply.roles.count) descriptors but carries \(descriptorCount)")
        }
    }
}
