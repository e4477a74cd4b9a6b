import CShmLinux
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A message received with the descriptors that came with it.
package struct ReceivedMessage {
    /// The payload bytes.
    package var payload: [UInt8]
    /// The descriptors, owned by the receiver (close-on-exec).
    package var descriptors: [FileDescriptor]
}

/// Why a message could not be received whole.
package enum ReceiveError: Error, Equatable, CustomStringConvertible {
    /// The payload was longer than the buffer; the rest was discarded (`MSG_TRUNC`).
    case payloadTruncated(length: Int, capacity: Int)
    /// Descriptors were discarded, because more came than expected or the descriptor table is
    /// full (`MSG_CTRUNC`, for example under a low `RLIMIT_NOFILE`). Those that did arrive were
    /// closed.
    case descriptorsTruncated(received: Int, maximum: Int)
    /// The peer closed the connection.
    case peerClosed
    /// `recvmsg` failed (EAGAIN with `nonBlocking`, ECONNRESET, ...).
    case system(SystemCallError)

    package var description: String {
        switch self {
        case .payloadTruncated(let length, let capacity):
            "message truncated: \(length) bytes did not fit a \(capacity)-byte buffer"
        case .descriptorsTruncated(let received, let maximum):
            "descriptors truncated: \(received) of at most \(maximum) arrived (too many sent, or descriptor table full)"
        case .peerClosed: "the peer closed the connection"
        case .system(let error): error.description
        }
    }
}

/// Sending and receiving descriptors over a Unix socket (`SCM_RIGHTS`).
package enum DescriptorPassing {
    /// The most descriptors one message can carry (the kernel's `SCM_MAX_FD`).
    package static let maximumDescriptors = Int(CSHMLINUX_MAX_FDS_PER_MESSAGE)

    /// Sends `payload` and `descriptors` as one message, with `MSG_NOSIGNAL` (a vanished peer is
    /// EPIPE, never SIGPIPE). The descriptors stay owned by the caller; the receiver gets copies.
    package static func send(
        _ payload: some Collection<UInt8>, descriptors: [FileDescriptor] = [], on socket: FileDescriptor
    ) throws(SystemCallError) {
        guard descriptors.count <= maximumDescriptors else {
            throw SystemCallError("sendmsg(SCM_RIGHTS)", .invalidArgument)
        }
        let bytes = Array(payload)
        let fds = descriptors.map(\.rawValue)
        let sent = try systemCall("sendmsg") {
            bytes.withUnsafeBytes { buffer in
                CShmLinux_send_with_fds(socket.rawValue, buffer.baseAddress, buffer.count, fds, Int32(fds.count))
            }
        }
        // A SEQPACKET or datagram message is sent whole or not at all.
        guard sent == bytes.count else { throw SystemCallError("sendmsg (short)", .messageTooLong) }
    }

    /// Receives one message of at most `capacity` bytes and `maximumDescriptors` descriptors.
    ///
    /// Truncation of either part is an error, and then every descriptor that did arrive is closed:
    /// a message is received whole or not at all.
    package static func receive(
        on socket: FileDescriptor, capacity: Int, maximumDescriptors: Int = 0, nonBlocking: Bool = false
    ) throws(ReceiveError) -> ReceivedMessage {
        let maximum = min(max(0, maximumDescriptors), Self.maximumDescriptors)
        var buffer = [UInt8](repeating: 0, count: max(1, capacity))
        var fds = [Int32](repeating: -1, count: max(1, maximum))
        var received = CShmLinux_received()
        let flags = nonBlocking ? MSG_DONTWAIT : 0
        while true {
            let rc = buffer.withUnsafeMutableBytes { bytes in
                CShmLinux_receive_with_fds(
                    socket.rawValue, bytes.baseAddress, capacity, &fds, Int32(maximum), Int32(flags), &received)
            }
            if rc == 0 { break }
            let error = Errno(rawValue: errno)
            if error == .interrupted { continue }
            throw .system(SystemCallError("recvmsg", error))
        }
        let descriptors = fds.prefix(Int(received.fd_count)).map { FileDescriptor(rawValue: $0) }
        if received.payload_truncated || received.descriptors_truncated {
            for descriptor in descriptors { descriptor.closeIgnoringErrors() }
            if received.payload_truncated {
                throw .payloadTruncated(length: Int(received.bytes), capacity: capacity)
            }
            throw .descriptorsTruncated(received: descriptors.count, maximum: maximum)
        }
        if received.bytes == 0 && descriptors.isEmpty { throw .peerClosed }
        return ReceivedMessage(payload: Array(buffer.prefix(Int(received.bytes))), descriptors: descriptors)
    }
}

/// A connected pair of Unix sockets (`socketpair(AF_UNIX, type | SOCK_CLOEXEC)`).
package func makeSocketPair(
    type: Int32 = Int32(SOCK_SEQPACKET.rawValue)
) throws(SystemCallError) -> (FileDescriptor, FileDescriptor) {
    var fds: [Int32] = [-1, -1]
    _ = try systemCall("socketpair") { socketpair(AF_UNIX, type | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) }
    return (FileDescriptor(rawValue: fds[0]), FileDescriptor(rawValue: fds[1]))
}
