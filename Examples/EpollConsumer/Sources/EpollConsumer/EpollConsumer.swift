// A ShmRing consumer in a plain epoll loop that also serves TCP: the shape of a gateway that reads
// a feed from shared memory next to its sockets, on one thread, without spinning.
//
// Usage: EpollConsumer KEY [--count N] [--port P]
//   Attaches to the ring KEY (waiting up to 10 s for its producer), listens on 127.0.0.1:P (0, the
//   default: any free port; the first line printed says which), and answers each connection
//   with one line, "messages=N bytes=B", then closes it. Ends after N messages, or when the
//   producer is gone and everything it published was read; prints a summary.
import CEpoll
import Glibc
import ShmRing

func fail(_ message: String) -> Never {
    let line = "EpollConsumer: \(message)\n"
    _ = line.withCString { write(2, $0, strlen($0)) }
    exit(1)
}

@main
enum EpollConsumer {
    static func main() {
        let arguments = Array(CommandLine.arguments.dropFirst())
        guard let key = arguments.first, !key.hasPrefix("-") else {
            fail("usage: EpollConsumer KEY [--count N] [--port P]")
        }
        func option(_ name: String) -> Int? {
            guard let index = arguments.firstIndex(of: name), index + 1 < arguments.count else { return nil }
            guard let value = Int(arguments[index + 1]), value >= 0 else { fail("\(name) needs a number") }
            return value
        }
        let limit = option("--count") ?? Int.max
        let port = option("--port") ?? 0

        // The ring: the library waits while nobody serves the key (up to 10 s here).
        let consumer: RingConsumer
        do {
            consumer = try RingConsumer.attach(waitingFor: key, timeout: .seconds(10))
        } catch {
            fail("\(error)")
        }

        // The socket.
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
                bind(listener, pointer, length) == 0 && listen(listener, 16) == 0
                    && getsockname(listener, pointer, &length) == 0
            }
        }
        guard listener >= 0, bound else { fail("cannot listen on 127.0.0.1:\(port): errno \(errno)") }
        print("listening on 127.0.0.1:\(UInt16(bigEndian: address.sin_port))")
        fflush(nil)

        // The loop: the consumer's wake-up eventfd and the listening socket, in one epoll set.
        let wake: Int32
        do {
            wake = try consumer.wakeEventDescriptor()
        } catch {
            fail("\(error)")
        }
        let epoll = CEpoll_create()
        guard epoll >= 0, CEpoll_add(epoll, wake) == 0, CEpoll_add(epoll, listener) == 0 else {
            fail("epoll: errno \(errno)")
        }
        var (messages, bytes, connections) = (0, 0, 0)
        var producerGone = false

        /// The contract of `wakeEventDescriptor`: poll until empty, then arm; `.ready` means poll again.
        /// The producer's going shows in either: `armWakeEvent` returns it, `poll` throws it.
        func readRing() throws(RingError) {
            while messages < limit {
                let got: Int
                do {
                    got = try consumer.poll(limit: min(256, limit - messages)) { message, _ in
                        bytes += message.byteCount
                        return .continue
                    }
                } catch {
                    guard error.code == .producerGone else { throw error }
                    producerGone = true
                    return
                }
                messages += got
                if got > 0 { continue }
                switch try consumer.armWakeEvent() {
                case .armed: return
                case .ready: continue
                case .producerGone:
                    producerGone = true
                    return
                }
            }
        }

        do {
            try readRing()
            var ready = [Int32](repeating: 0, count: 8)
            while messages < limit && !producerGone {
                let count = CEpoll_wait(epoll, &ready, 8, -1)
                if count < 0 && errno == EINTR { continue }
                guard count >= 0 else { fail("epoll_wait: errno \(errno)") }
                for descriptor in ready.prefix(Int(count)) {
                    if descriptor == wake {
                        consumer.acknowledgeWakeEvent()  // drains it, passes a wake on if asked
                        try readRing()
                    } else {
                        let connection = accept(listener, nil, nil)
                        guard connection >= 0 else { continue }
                        let line = "messages=\(messages) bytes=\(bytes)\n"
                        _ = line.withCString { write(connection, $0, strlen($0)) }
                        close(connection)
                        connections += 1
                    }
                }
            }
        } catch {
            fail("\(error)")
        }
        consumer.detach()
        print(
            "received \(messages) messages (\(bytes) bytes), served \(connections) connections"
                + (producerGone ? "; the producer is gone" : ""))
    }
}
