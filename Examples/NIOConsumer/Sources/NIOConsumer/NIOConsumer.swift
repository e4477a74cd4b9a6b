// A ShmRing consumer on a SwiftNIO event loop, next to a TCP server on the same loop: the shape
// of a Swift trading gateway that reads a feed from shared memory beside its sockets.
//
// Usage: NIOConsumer KEY [--count N] [--port P]
//   Attaches to the ring KEY (waiting up to 10 s for its producer), serves 127.0.0.1:P (0, the
//   default: any free port; the first line printed says which) with one line per connection,
//   "messages=N bytes=B", and ends after N messages or when the producer is gone and everything
//   it published was read, with a summary.
//
// The consumer's wake-up eventfd (RingConsumer.wakeEventDescriptor) joins the loop as the input
// of a pipe channel: NIO reads it when it becomes readable (which drains it), and the handler
// then polls the ring until it is empty and arms the consumer again.
import Glibc
import NIOCore
import NIOPosix
import ShmRing

func fail(_ message: String) -> Never {
    let line = "NIOConsumer: \(message)\n"
    _ = line.withCString { write(2, $0, strlen($0)) }
    exit(1)
}

/// The ring's side, touched on its event loop only (hence `@unchecked Sendable`).
final class Feed: @unchecked Sendable {
    let consumer: RingConsumer
    let loop: EventLoop
    let limit: Int
    var messages = 0
    var bytes = 0
    var producerGone = false
    let done: EventLoopPromise<Void>

    init(consumer: RingConsumer, loop: EventLoop, limit: Int) {
        self.consumer = consumer
        self.loop = loop
        self.limit = limit
        done = loop.makePromise()
    }

    /// The contract of `wakeEventDescriptor`: poll until empty, then arm; `.ready` means poll
    /// again, `.armed` means wait for the eventfd. The producer's going shows in either:
    /// `armWakeEvent` returns it, `poll` throws it.
    func read() {
        loop.preconditionInEventLoop()
        do {
            while messages < limit {
                let got: Int
                do {
                    got = try consumer.poll(limit: min(256, limit - messages)) { message, _ in
                        self.bytes += message.byteCount
                        return .continue
                    }
                } catch {
                    guard error.code == .producerGone else { throw error }
                    producerGone = true
                    done.succeed()
                    return
                }
                messages += got
                if got > 0 { continue }
                switch try consumer.armWakeEvent() {
                case .armed: return
                case .ready: continue
                case .producerGone:
                    producerGone = true
                    done.succeed()
                    return
                }
            }
            done.succeed()
        } catch {
            done.fail(error)
        }
    }
}

/// Reads of the wake-up eventfd: each one means "poll the ring".
final class WakeHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    let feed: Feed

    init(feed: Feed) { self.feed = feed }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // NIO read the eventfd's counter (it is drained); this passes a wake on if asked.
        feed.consumer.acknowledgeWakeEvent()
        feed.read()
    }
}

/// Answers a connection with what the feed has received so far, then closes it.
final class StatusHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    let feed: Feed

    init(feed: Feed) { self.feed = feed }

    func channelActive(context: ChannelHandlerContext) {
        let line = "messages=\(feed.messages) bytes=\(feed.bytes)\n"
        let buffer = context.channel.allocator.buffer(string: line)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(buffer)).whenComplete { _ in channel.close(promise: nil) }
    }
}

@main
enum NIOConsumer {
    static func main() throws {
        let arguments = Array(CommandLine.arguments.dropFirst())
        guard let key = arguments.first, !key.hasPrefix("-") else {
            fail("usage: NIOConsumer KEY [--count N] [--port P]")
        }
        func option(_ name: String) -> Int? {
            guard let index = arguments.firstIndex(of: name), index + 1 < arguments.count else { return nil }
            guard let value = Int(arguments[index + 1]), value >= 0 else { fail("\(name) needs a number") }
            return value
        }
        let limit = option("--count") ?? Int.max
        let port = option("--port") ?? 0

        // The library waits while nobody serves the key (up to 10 s here).
        let consumer: RingConsumer
        do {
            consumer = try RingConsumer.attach(waitingFor: key, timeout: .seconds(10))
        } catch {
            fail("\(error)")
        }
        // NIO closes the descriptors it is given: give it a duplicate (the consumer owns its own).
        let wake = dup(try consumer.wakeEventDescriptor())
        guard wake >= 0 else { fail("dup: errno \(errno)") }

        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        let feed = Feed(consumer: consumer, loop: loop, limit: limit)
        let server = try ServerBootstrap(group: loop)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(StatusHandler(feed: feed))
                }
            }
            .bind(host: "127.0.0.1", port: port).wait()
        print("listening on 127.0.0.1:\(server.localAddress?.port ?? 0)")
        fflush(nil)
        let wakeChannel = try NIOPipeBootstrap(group: loop)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(WakeHandler(feed: feed))
                }
            }
            .takingOwnershipOfDescriptor(input: wake).wait()
        loop.execute { feed.read() }  // what is there already, and the first arming

        do {
            try feed.done.futureResult.wait()
        } catch {
            fail("\(error)")
        }
        try wakeChannel.close().wait()
        try server.close().wait()
        try loop.submit { feed.consumer.detach() }.wait()
        try group.syncShutdownGracefully()
        print(
            "received \(feed.messages) messages (\(feed.bytes) bytes)"
                + (feed.producerGone ? "; the producer is gone" : ""))
    }
}
