import CShmAtomics
import CShmLinux
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The creator's side of the rendezvous: a thread serving one key on a `SOCK_SEQPACKET` socket.
///
/// One request per connection. The thread accepts, reads the request, checks nothing itself but
/// the protocol and hands the request with the client's kernel-recorded credentials to the
/// `handler` (which applies the access policy), sends the reply and the descriptors, and keeps the
/// connection open as the liveness channel when the handler says so. It is built to survive
/// hostile clients (docs/rendezvous.md):
/// - a client that sends nothing is dropped after `handshakeTimeout`;
/// - garbage, oversized or truncated requests get a `badRequest` reply and are dropped;
/// - a client that vanishes mid-handshake costs an EPIPE/ECONNRESET (`MSG_NOSIGNAL`: no SIGPIPE);
/// - at most `maximumPendingConnections` handshakes at once; more are closed at accept;
/// - a full descriptor table (EMFILE, ENFILE) makes the listening socket readable forever: the
///   server stops polling it for `acceptBackoff` instead of spinning.
/// All sockets are non-blocking, so no client can stall the thread.
package final class RendezvousServer: @unchecked Sendable {
    // @unchecked Sendable: the thread owns all connection state; other threads only read the
    // counters (atomics) and call `stop()`, which synchronises through the eventfd and pthread_join.

    /// What the handler answers.
    package struct Response {
        package var reply: RendezvousProtocol.Reply
        /// Sent with the reply; stay owned by the creator.
        package var descriptors: [FileDescriptor] = []
        /// Sent with the reply, then closed (for example a read-only reopen made for this client).
        package var temporaryDescriptors: [FileDescriptor] = []
        /// Keep the connection open after a successful reply (the attacher's liveness channel).
        package var keepOpen = false
        /// Runs on the server thread when a kept connection ends: with `true` when the attacher
        /// is gone (it detached or died: its end hung up, or it never took the reply), with
        /// `false` when the server ended it (the server stops, or the attacher wrote where the
        /// protocol allows nothing).
        package var onClose: (@Sendable (_ attacherGone: Bool) -> Void)?
        /// For a kept connection: whether the attacher has finished setting up after its reply
        /// (a ring consumer has joined), asked on the server thread on each of its rounds until
        /// it says yes. At `settleTimeout` after the reply it is asked with `final` true, and must
        /// then decide for good (refusing a late settle); if the answer is still no, the server
        /// ends the connection (`onClose(false)`, counted in `settleTimeouts`): a joiner that
        /// hangs or was stopped mid-join does not hold its reservation for ever. (One that died
        /// hangs up, which ends the connection at once.)
        package var settled: (@Sendable (_ final: Bool) -> Bool)?
        package var settleTimeout: Duration = .seconds(5)

        package init(reply: RendezvousProtocol.Reply) { self.reply = reply }
    }

    /// Answers a request of an admitted client. (The descriptors a client sent: none in version 1,
    /// where the server closes whatever arrives; the ring consumer's request will carry some.)
    package typealias Handler =
        @Sendable (RendezvousProtocol.Request, PeerCredentials, [FileDescriptor]) -> Response

    package struct Configuration: Sendable {
        package var handshakeTimeout: Duration = .seconds(5)
        package var maximumPendingConnections = 128
        package var acceptBackoff: Duration = .milliseconds(50)
        package var backlog: Int32 = 128
        package init() {}
    }

    /// Counters, readable from any thread.
    package struct Statistics: Equatable, Sendable {
        package var served: UInt64
        package var refused: UInt64
        package var badRequests: UInt64
        package var handshakeTimeouts: UInt64
        package var acceptBackoffs: UInt64
        package var attached: UInt64
        /// Kept connections ended because the attacher had not settled in time (`Response.settled`).
        package var settleTimeouts: UInt64
    }

    package let address: RendezvousAddress
    private let listener: FileDescriptor
    private let wake: FileDescriptor
    private let lockFile: FileDescriptor?
    private let configuration: Configuration
    // Set by `start` before the thread is created (pthread_create orders it for the thread), read
    // only by the thread afterwards.
    private var admits: (@Sendable (PeerCredentials) -> Bool)?
    private var handler: Handler?
    private let counters: UnsafeMutablePointer<UInt64>
    private var thread: pthread_t?
    private var closed = false

    private enum Counter: Int, CaseIterable {
        case served, refused, badRequests, handshakeTimeouts, acceptBackoffs, attached, settleTimeouts
    }

    /// Claims the key: takes the directory lock file if any and binds and listens on the socket,
    /// without serving yet. Claiming first lets a creator learn that the key is taken before it
    /// reserves any memory.
    ///
    /// - Throws: `.alreadyExists` when a live creator serves the key; `.system` otherwise.
    package static func bind(
        address: RendezvousAddress, configuration: Configuration = Configuration()
    ) throws(RendezvousError) -> RendezvousServer {
        var lockFile: FileDescriptor?
        var listener: FileDescriptor?
        do throws(RendezvousError) {
            if let lockPath = address.lockPath {
                lockFile = try acquireLockFile(lockPath, address: address)
                // We hold the lock: any socket file is a crashed creator's leftover.
                if let socketPath = address.socketPath { unlink(socketPath) }
            }
            listener = try bindListener(address, backlog: configuration.backlog)
            let wake: FileDescriptor
            do throws(SystemCallError) {
                wake = FileDescriptor(
                    rawValue: try systemCall("eventfd") {
                        CShmLinux_eventfd(0, CShmLinux_EFD_CLOEXEC | CShmLinux_EFD_NONBLOCK)
                    })
            } catch {
                throw .system(error)
            }
            return RendezvousServer(
                address: address, listener: listener!, wake: wake, lockFile: lockFile, configuration: configuration)
        } catch {
            // Nothing owns them yet: close here, once.
            if let listener {
                listener.closeIgnoringErrors()
                if let socketPath = address.socketPath { unlink(socketPath) }
            }
            if let lockFile, let lockPath = address.lockPath {
                unlink(lockPath)
                lockFile.closeIgnoringErrors()
            }
            throw error
        }
    }

    /// Starts the serving thread.
    ///
    /// - Parameters:
    ///   - admits: the access policy, applied as soon as a connection is accepted: a client it
    ///     refuses gets a `permissionDenied` reply at once and never takes a handshake slot.
    ///   - handler: answers an admitted client's request (on the server thread).
    package func start(
        admits: @escaping @Sendable (PeerCredentials) -> Bool, handler: @escaping Handler
    ) throws(RendezvousError) {
        precondition(thread == nil && !closed, "start() once, on a bound server")
        self.admits = admits
        self.handler = handler
        do throws(SystemCallError) {
            thread = try startThread { [self] in serve() }
        } catch {
            throw .system(error)
        }
    }

    private init(
        address: RendezvousAddress, listener: FileDescriptor, wake: FileDescriptor, lockFile: FileDescriptor?,
        configuration: Configuration
    ) {
        self.address = address
        self.listener = listener
        self.wake = wake
        self.lockFile = lockFile
        self.configuration = configuration
        counters = .allocate(capacity: Counter.allCases.count)
        counters.initialize(repeating: 0, count: Counter.allCases.count)
    }

    deinit {
        stop()
        counters.deallocate()
    }

    /// Stops serving: closes every connection (attachers see the hang-up), unbinds the name, and
    /// joins the thread. Idempotent; called from the owner's thread.
    package func stop() {
        if let thread {
            var one: UInt64 = 1
            _ = Glibc.write(wake.rawValue, &one, 8)
            pthread_join(thread, nil)
            self.thread = nil
        }
        closeEverything()
    }

    package var statistics: Statistics {
        func load(_ counter: Counter) -> UInt64 {
            // Relaxed: statistics only; no other data is published through them.
            CShmAtomics_u64_load_relaxed(counters + counter.rawValue)
        }
        return Statistics(
            served: load(.served), refused: load(.refused), badRequests: load(.badRequests),
            handshakeTimeouts: load(.handshakeTimeouts), acceptBackoffs: load(.acceptBackoffs),
            attached: load(.attached), settleTimeouts: load(.settleTimeouts))
    }

    private func count(_ counter: Counter, _ delta: Int64 = 1) {
        // Relaxed: statistics only (written by the server thread alone).
        _ = CShmAtomics_u64_fetch_add_relaxed(counters + counter.rawValue, UInt64(bitPattern: delta))
    }

    private func closeEverything() {
        guard !closed else { return }
        closed = true
        listener.closeIgnoringErrors()
        wake.closeIgnoringErrors()
        if let socketPath = address.socketPath { unlink(socketPath) }
        if let lockFile, let lockPath = address.lockPath {
            // Unlink while still holding the lock: a creator that opened the old file will see that
            // the path no longer names it and retry (acquireLockFile).
            unlink(lockPath)
            lockFile.closeIgnoringErrors()
        }
    }

    // MARK: - The thread

    private struct Pending {
        var socket: FileDescriptor
        var deadline: ContinuousClock.Instant
    }

    /// A connection kept open after its reply, and what to do when it ends.
    private struct Attached {
        var socket: FileDescriptor
        var onClose: (@Sendable (_ attacherGone: Bool) -> Void)?
        /// Until the attacher has settled: the question, and when to stop waiting for a yes.
        var settled: (@Sendable (_ final: Bool) -> Bool)?
        var settleDeadline: ContinuousClock.Instant?

        func close(attacherGone: Bool) {
            socket.closeIgnoringErrors()
            onClose?(attacherGone)
        }
    }

    private func serve() {
        var pending: [Pending] = []
        var attached: [Attached] = []
        var backoffUntil: ContinuousClock.Instant?
        defer {
            for connection in pending { connection.socket.closeIgnoringErrors() }
            for connection in attached { connection.close(attacherGone: false) }
            count(.attached, -Int64(attached.count))
        }
        while true {
            let now = ContinuousClock.now
            if let until = backoffUntil, until <= now { backoffUntil = nil }
            let listening = backoffUntil == nil
            var entries = [pollfd(fd: wake.rawValue, events: Int16(POLLIN), revents: 0)]
            entries.append(pollfd(fd: listening ? listener.rawValue : -1, events: Int16(POLLIN), revents: 0))
            for connection in pending {
                entries.append(pollfd(fd: connection.socket.rawValue, events: Int16(POLLIN), revents: 0))
            }
            let hangUp = Int16(POLLIN) | CShmLinux_POLLRDHUP
            for connection in attached {
                entries.append(pollfd(fd: connection.socket.rawValue, events: hangUp, revents: 0))
            }

            var nextDeadline = (pending.map(\.deadline) + attached.compactMap(\.settleDeadline)).min()
            if let until = backoffUntil { nextDeadline = min(nextDeadline ?? until, until) }
            let timeout = nextDeadline.map { ($0 - now).pollMilliseconds } ?? -1
            let ready = Glibc.poll(&entries, nfds_t(entries.count), timeout)
            if ready < 0 && errno != EINTR { usleep(10_000) }  // ENOMEM: do not spin
            if entries[0].revents != 0 { return }

            // Attached connections: any event ends one, a hang-up or a message where the protocol
            // allows none after the reply.
            let attachedBase = 2 + pending.count
            var stillAttached: [Attached] = []
            let polledAt = ContinuousClock.now
            for (index, var connection) in attached.enumerated() {
                let events = entries[attachedBase + index].revents
                if events != 0 {
                    connection.close(
                        attacherGone: events & (CShmLinux_POLLRDHUP | Int16(POLLHUP) | Int16(POLLERR)) != 0)
                    count(.attached, -1)
                    continue
                }
                if let deadline = connection.settleDeadline {
                    if connection.settled?(deadline <= polledAt) ?? true {
                        connection.settleDeadline = nil
                        connection.settled = nil
                    } else if deadline <= polledAt {
                        count(.settleTimeouts)
                        connection.close(attacherGone: false)
                        count(.attached, -1)
                        continue
                    }
                }
                stillAttached.append(connection)
            }
            attached = stillAttached

            // Handshakes in progress: serve the readable ones, drop the ones past their deadline.
            var stillPending: [Pending] = []
            let afterPoll = ContinuousClock.now
            for (index, connection) in pending.enumerated() {
                if entries[2 + index].revents != 0 {
                    if let kept = handle(connection.socket) {
                        attached.append(kept)
                    } else {
                        connection.socket.closeIgnoringErrors()
                    }
                } else if connection.deadline <= afterPoll {
                    count(.handshakeTimeouts)
                    connection.socket.closeIgnoringErrors()
                } else {
                    stillPending.append(connection)
                }
            }
            pending = stillPending

            if listening && entries[1].revents != 0 {
                acceptAll(into: &pending, backoffUntil: &backoffUntil)
            }
        }
    }

    private func acceptAll(into pending: inout [Pending], backoffUntil: inout ContinuousClock.Instant?) {
        for _ in 0..<64 {
            let fd = CShmLinux_accept4(listener.rawValue, Int32(SOCK_CLOEXEC.rawValue | SOCK_NONBLOCK.rawValue))
            if fd < 0 {
                switch errno {
                case EAGAIN, EWOULDBLOCK: return
                case EINTR, ECONNABORTED, EPROTO: continue
                default:
                    // EMFILE, ENFILE, ENOBUFS, ENOMEM: the pending connection stays in the backlog
                    // and the listener stays readable; stop polling it for a while.
                    count(.acceptBackoffs)
                    backoffUntil = ContinuousClock.now + configuration.acceptBackoff
                    return
                }
            }
            let socket = FileDescriptor(rawValue: fd)
            // The policy first: credentials are known from accept on, so a refused client never
            // takes a handshake slot (and cannot crowd out admitted ones).
            guard let credentials = try? PeerCredentials.of(socket), admits?(credentials) == true else {
                count(.refused)
                reject(socket, .permissionDenied)
                socket.closeIgnoringErrors()
                continue
            }
            if pending.count >= configuration.maximumPendingConnections {
                count(.refused)
                socket.closeIgnoringErrors()
                continue
            }
            pending.append(Pending(socket: socket, deadline: ContinuousClock.now + configuration.handshakeTimeout))
        }
    }

    /// Serves one request. Returns the connection when it stays open as a liveness channel.
    private func handle(_ socket: FileDescriptor) -> Attached? {
        let message: ReceivedMessage
        do {
            message = try DescriptorPassing.receive(
                on: socket, capacity: RendezvousProtocol.maximumRequestLength, maximumDescriptors: 8, nonBlocking: true)
        } catch {
            switch error {
            case .payloadTruncated, .descriptorsTruncated:
                count(.badRequests)
                reject(socket, .badRequest)
            case .peerClosed, .system:
                break  // vanished mid-handshake, or EAGAIN after a spurious wake-up: just drop it
            }
            return nil
        }
        // Version 1 uses no client descriptors: close them before anything else (and before the
        // reply, so that a client that has its reply knows they are gone).
        for descriptor in message.descriptors { descriptor.closeIgnoringErrors() }
        let request: RendezvousProtocol.Request
        do {
            request = try RendezvousProtocol.Request.decode(message.payload)
        } catch {
            count(.badRequests)
            reject(socket, .badRequest)
            return nil
        }
        guard RendezvousProtocol.isCompatible(version: request.version, minimum: request.minimumCompatibleVersion)
        else {
            count(.badRequests)
            reject(socket, .unsupportedVersion)
            return nil
        }
        guard let credentials = try? PeerCredentials.of(socket), let handler else { return nil }
        var response = handler(request, credentials, [])
        defer { for descriptor in response.temporaryDescriptors { descriptor.closeIgnoringErrors() } }
        let ok = response.reply.status == .ok
        if !ok {
            // A refused client learns why, and nothing about the segment.
            response.reply = Self.refusal(response.reply.status, errno: response.reply.errno)
            response.descriptors = []
        }
        let staysOpen = ok && response.keepOpen
        // Counted before the reply goes out, so that a client that has its reply sees itself counted.
        count(ok ? .served : .refused)
        if staysOpen { count(.attached) }
        do {
            try DescriptorPassing.send(
                response.reply.encoded(), descriptors: response.descriptors + response.temporaryDescriptors,
                on: socket)
        } catch {
            // The client vanished (EPIPE, ECONNRESET) or will not read (EAGAIN): release what the
            // handler set aside for it.
            if staysOpen { count(.attached, -1) }
            response.onClose?(true)
            return nil
        }
        guard staysOpen else {
            response.onClose?(true)
            return nil
        }
        return Attached(
            socket: socket, onClose: response.onClose, settled: response.settled,
            settleDeadline: response.settled.map { _ in ContinuousClock.now + response.settleTimeout })
    }

    /// Best-effort error reply to a client that is refused or broke the protocol.
    private func reject(_ socket: FileDescriptor, _ status: RendezvousProtocol.Status) {
        try? DescriptorPassing.send(Self.refusal(status).encoded(), on: socket)
    }

    /// A reply that says only why: no segment id, sizes or flags (the creator's pid and uid are no
    /// secret: SO_PEERCRED tells them to anyone who connects).
    private static func refusal(_ status: RendezvousProtocol.Status, errno: Int32 = 0) -> RendezvousProtocol.Reply {
        var reply = RendezvousProtocol.Reply(
            status: status, segmentKind: .sharedMemory, creatorPID: getpid(), creatorUID: geteuid(),
            segmentID: SegmentID(high: 0, low: 0), size: 0, mappedSize: 0)
        reply.errno = errno
        return reply
    }
}
