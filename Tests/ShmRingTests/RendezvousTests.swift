import CShmLinux
import SystemPackage
import Testing

@testable import ShmRing

#if canImport(Glibc)
import Glibc
#endif

/// A raw client: connects to `key`'s socket and does whatever the test says, nothing more.
func rawConnection(to key: String) throws -> FileDescriptor {
    let address = try RendezvousAddress(key: key, namespace: .abstract)
    let fd = socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue | SOCK_CLOEXEC.rawValue), 0)
    try #require(fd >= 0)
    let rc = address.withSocketAddress { connect(fd, $0, $1) }
    try #require(rc == 0, "connect: errno \(errno)")
    return FileDescriptor(rawValue: fd)
}

/// Whether `socket` shows a hang-up within `timeout` (a bound, not a measurement).
func hangsUp(_ socket: FileDescriptor, within timeout: Duration = .seconds(60)) -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        var entry = pollfd(fd: socket.rawValue, events: CShmLinux_POLLRDHUP, revents: 0)
        if poll(&entry, 1, 1000) > 0 && entry.revents & (CShmLinux_POLLRDHUP | Int16(POLLHUP)) != 0 { return true }
    }
    return false
}

/// The reply a raw client received.
func readReply(_ socket: FileDescriptor) throws -> RendezvousProtocol.Reply {
    var entry = pollfd(fd: socket.rawValue, events: Int16(POLLIN), revents: 0)
    try #require(poll(&entry, 1, 60_000) == 1, "no reply within 60 s")
    let message = try DescriptorPassing.receive(on: socket, capacity: 512, maximumDescriptors: 16)
    for descriptor in message.descriptors { descriptor.closeIgnoringErrors() }
    return try RendezvousProtocol.Reply.decode(message.payload)
}

@Suite struct RendezvousProtocolTests {
    @Test func requestsAndRepliesRoundTrip() throws {
        let request = RendezvousProtocol.Request(kind: .attachSegment, flags: [.readWrite])
        #expect(request.encoded().count == RendezvousProtocol.Request.length)
        #expect(try RendezvousProtocol.Request.decode(request.encoded()) == request)
        var reply = RendezvousProtocol.Reply(
            status: .ok, segmentKind: .sharedMemory, creatorPID: 42, creatorUID: 1000,
            segmentID: SegmentID(high: 1, low: 2), size: 100, mappedSize: 4096)
        reply.roles = [.data, .lock]
        reply.flags = [.creatorOnlyWriters]
        #expect(try RendezvousProtocol.Reply.decode(reply.encoded()) == reply)
    }

    @Test func garbageDecodesToTypedErrors() {
        #expect(throws: RendezvousProtocolError.badLength(3, expected: 16)) {
            try RendezvousProtocol.Request.decode([1, 2, 3])
        }
        #expect(throws: RendezvousProtocolError.badMagic) {
            try RendezvousProtocol.Request.decode([UInt8](repeating: 0xff, count: 16))
        }
        var unknownKind = RendezvousProtocol.Request(kind: .observe, flags: []).encoded()
        unknownKind[8] = 99
        #expect(throws: RendezvousProtocolError.malformed("unknown request kind 99")) {
            try RendezvousProtocol.Request.decode(unknownKind)
        }
        var reply = RendezvousProtocol.Reply(
            status: .ok, segmentKind: .sharedMemory, creatorPID: 1, creatorUID: 1, segmentID: .random(), size: 1,
            mappedSize: 1)
        reply.roles = [.data]
        var bytes = reply.encoded()
        bytes[64] = 200  // claims 200 roles
        #expect(throws: RendezvousProtocolError.self) { try RendezvousProtocol.Reply.decode(bytes) }
        // Every truncation of a valid reply is an error, never a crash.
        let valid = reply.encoded()
        for length in 0..<valid.count {
            #expect(throws: RendezvousProtocolError.self) {
                try RendezvousProtocol.Reply.decode(Array(valid[..<length]))
            }
        }
    }

    @Test func versionsNegotiate() {
        #expect(RendezvousProtocol.isCompatible(version: 2, minimum: 2))
        #expect(RendezvousProtocol.isCompatible(version: 7, minimum: 2), "a newer peer that accepts us")
        #expect(!RendezvousProtocol.isCompatible(version: 7, minimum: 5), "a newer peer that does not")
        #expect(!RendezvousProtocol.isCompatible(version: 1, minimum: 1), "version 1: a 32-bit generation")
    }

    /// A slot generation travels whole (version 1 cut it to 32 bits).
    @Test func aGenerationTravelsInAll64Bits() throws {
        var reply = RendezvousProtocol.Reply(
            status: .ok, segmentKind: .ring, creatorPID: 1, creatorUID: 2, segmentID: .random(), size: 4096,
            mappedSize: 8192)
        reply.slot = 3
        reply.generation = 0x1234_5678_9ABC_DEF0
        reply.roles = [.consumerSlot, .data]
        #expect(try RendezvousProtocol.Reply.decode(reply.encoded()) == reply)
    }
}

/// Clients talking to servers that misbehave.
@Suite struct MisbehavingServerTests {
    /// A server under `key` answering every request with `reply` (encoded as given).
    func serve(_ key: String, _ transform: @escaping @Sendable (inout RendezvousProtocol.Reply) -> Void) throws
        -> RendezvousServer
    {
        let server = try RendezvousServer.bind(address: RendezvousAddress(key: key, namespace: .abstract))
        try server.start(admits: { _ in true }) { _, _, _ in
            var reply = RendezvousProtocol.Reply(
                status: .ok, segmentKind: .sharedMemory, creatorPID: getpid(), creatorUID: geteuid(),
                segmentID: .random(), size: 64, mappedSize: 4096)
            transform(&reply)
            return RendezvousServer.Response(reply: reply)
        }
        return server
    }

    @Test func aCreatorOfAnotherProtocolVersionIsIncompatible() throws {
        let key = uniqueKey()
        let server = try serve(key) { reply in
            reply.version = 9
            reply.minimumCompatibleVersion = 9
        }
        defer { server.stop() }
        let error = expectError(.incompatible) { try SharedMemory(key: key).attach() }
        #expect(error?.message.contains("protocol 9") == true)
    }

    @Test func aRingIsNotASharedMemorySegment() throws {
        let key = uniqueKey()
        let server = try serve(key) { $0.segmentKind = .ring }
        defer { server.stop() }
        let error = expectError(.incompatible) { try SharedMemory(key: key).attach() }
        #expect(error?.message.contains("is a ring, not a shared-memory segment") == true)
    }

    @Test func aReplyWithoutItsDescriptorsIsUnknown() throws {
        let key = uniqueKey()
        let server = try serve(key) { $0.roles = [.data, .lock] }  // names two, sends none
        defer { server.stop() }
        let error = expectError(.unknown) { try SharedMemory(key: key).attach() }
        #expect(error?.message.contains("names 2 descriptors but carries 0") == true)
    }

    @Test func aGarbageReplyIsUnknown() throws {
        let key = uniqueKey()
        let address = try RendezvousAddress(key: key, namespace: .abstract)
        let listener = socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue | SOCK_CLOEXEC.rawValue), 0)
        defer { close(listener) }
        try #require(address.withSocketAddress { bind(listener, $0, $1) } == 0)
        try #require(listen(listener, 4) == 0)
        let thread = try startThread {
            let client = accept(listener, nil, nil)
            guard client >= 0 else { return }
            var request = [UInt8](repeating: 0, count: 64)
            _ = recv(client, &request, request.count, 0)
            let garbage: [UInt8] = Array("HTTP/1.1 200 OK\r\n\r\n".utf8)
            _ = send(client, garbage, garbage.count, Int32(MSG_NOSIGNAL))
            var byte: UInt8 = 0
            _ = recv(client, &byte, 1, 0)  // until the client hangs up
            close(client)
        }
        defer { pthread_join(thread, nil) }
        let error = expectError(.unknown) { try SharedMemory(key: key).attach() }
        #expect(error?.message.contains("does not decode") == true)
    }
}

/// The server against hostile clients (in-process; the full descriptor table is a multi-process test).
@Suite struct HostileClientTests {
    func creator(handshake: Duration = .seconds(5)) throws -> SharedMemory {
        let memory = SharedMemory(key: uniqueKey())
        memory.handshakeTimeout = handshake
        try memory.create(size: 64)
        return memory
    }

    func attachWorks(_ key: String) -> Bool {
        let memory = SharedMemory(key: key)
        do { try memory.attach() } catch { return false }
        return memory.isAttached
    }

    @Test func aClientThatSendsNothingIsDroppedAndDoesNotBlockOthers() throws {
        let creator = try creator(handshake: .seconds(2))
        let silent = try rawConnection(to: creator.key)
        defer { silent.closeIgnoringErrors() }
        #expect(attachWorks(creator.key), "served while a silent client waits")
        #expect(hangsUp(silent), "dropped after the handshake timeout")
        #expect(creator.serverStatistics?.handshakeTimeouts == 1)
    }

    @Test func garbageGetsBadRequestAndTheServerGoesOn() throws {
        let creator = try creator()
        for garbage in [[UInt8](repeating: 0x41, count: 16), [1, 2, 3], Array("SRV1xxxxxxxxxxxx".utf8)] {
            let client = try rawConnection(to: creator.key)
            defer { client.closeIgnoringErrors() }
            try DescriptorPassing.send(garbage, on: client)
            #expect(try readReply(client).status == .badRequest)
            #expect(hangsUp(client))
        }
        #expect(attachWorks(creator.key))
        #expect(creator.serverStatistics?.badRequests == 3)
    }

    @Test func anOversizedMessageIsRefused() throws {
        let creator = try creator()
        let client = try rawConnection(to: creator.key)
        defer { client.closeIgnoringErrors() }
        try DescriptorPassing.send([UInt8](repeating: 7, count: 65536), on: client)
        #expect(try readReply(client).status == .badRequest)
        #expect(attachWorks(creator.key))
    }

    @Test func descriptorsSentByAClientAreClosed() throws {
        let creator = try creator()
        let marker = try Segment.create(name: "marker-\(UInt64.random(in: 0...UInt64.max))", size: 1)
        let client = try rawConnection(to: creator.key)
        defer { client.closeIgnoringErrors() }
        let request = RendezvousProtocol.Request(kind: .attachSegment, flags: [])
        try DescriptorPassing.send(
            request.encoded(), descriptors: Array(repeating: marker.descriptor, count: 5), on: client)
        #expect(try readReply(client).status == .ok)
        // The server received five copies of the marker's descriptor and closed them all.
        #expect(descriptorsOpen(on: marker) == 1)
        // The same with more descriptors than the server accepts (truncated: bad request).
        let another = try rawConnection(to: creator.key)
        defer { another.closeIgnoringErrors() }
        try DescriptorPassing.send(
            request.encoded(), descriptors: Array(repeating: marker.descriptor, count: 20), on: another)
        #expect(try readReply(another).status == .badRequest)
        #expect(attachWorks(creator.key))
        #expect(descriptorsOpen(on: marker) == 1)
    }

    @Test func clientsThatVanishMidHandshake() throws {
        let creator = try creator()
        // Connects and goes away at once.
        try rawConnection(to: creator.key).closeIgnoringErrors()
        // Sends a valid request and goes away before the reply: the server's send fails with
        // EPIPE or ECONNRESET (MSG_NOSIGNAL: a SIGPIPE would end this test process).
        for _ in 0..<20 {
            let client = try rawConnection(to: creator.key)
            try DescriptorPassing.send(
                RendezvousProtocol.Request(kind: .attachSegment, flags: [.readWrite]).encoded(), on: client)
            client.closeIgnoringErrors()
        }
        #expect(attachWorks(creator.key))
    }

    @Test func aHundredAtOnce() throws {
        let creator = try creator()
        // A hundred silent connections and a hundred attachments, all open at the same time.
        let silent = try (0..<100).map { _ in try rawConnection(to: creator.key) }
        defer { for socket in silent { socket.closeIgnoringErrors() } }
        var attachers: [SharedMemory] = []
        for _ in 0..<100 {
            let memory = SharedMemory(key: creator.key)
            try memory.attach(mode: .readOnly)
            attachers.append(memory)
        }
        #expect(creator.serverStatistics?.served == 100)
        #expect(creator.serverStatistics?.attached == 100)
        for memory in attachers { memory.detach() }
        // Detached attachers hang up; the server notices each one (a bound, not a timing).
        let deadline = ContinuousClock.now + .seconds(60)
        while creator.serverStatistics?.attached != 0 && ContinuousClock.now < deadline { usleep(1000) }
        #expect(creator.serverStatistics?.attached == 0)
    }
}

@Suite struct RendezvousEdgeTests {
    @Test func aRefusedClientLearnsNothingAboutTheSegment() throws {
        var policy = AccessPolicy()
        policy.allowedUsers = [geteuid() &+ 1]
        let creator = SharedMemory(key: uniqueKey())
        try creator.create(size: 12345, policy: policy)
        let client = try rawConnection(to: creator.key)
        defer { client.closeIgnoringErrors() }
        // Refused at accept, before any request.
        let reply = try readReply(client)
        #expect(reply.status == .permissionDenied)
        #expect(reply.segmentID == SegmentID(high: 0, low: 0) && reply.size == 0 && reply.roles.isEmpty)
        #expect(creator.serverStatistics?.refused == 1)
    }

    @Test func aSquatterThatNeverAcceptsCannotHangAnAttacher() throws {
        let key = uniqueKey()
        let address = try RendezvousAddress(key: key, namespace: .abstract)
        let listener = socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue | SOCK_CLOEXEC.rawValue), 0)
        defer { close(listener) }
        try #require(address.withSocketAddress { bind(listener, $0, $1) } == 0)
        try #require(listen(listener, 0) == 0)
        // Fill the backlog (never accepted), so that the next connect would block.
        var fillers: [Int32] = []
        defer { for fd in fillers { close(fd) } }
        for _ in 0..<4 {
            let fd = socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue | SOCK_CLOEXEC.rawValue | SOCK_NONBLOCK.rawValue), 0)
            fillers.append(fd)
            if address.withSocketAddress({ connect(fd, $0, $1) }) != 0 { break }
        }
        let memory = SharedMemory(key: key)
        memory.handshakeTimeout = .milliseconds(500)
        let error = expectError(.unknown) { try memory.attach() }
        #expect(error?.message.contains("no answer") == true, "\(String(describing: error))")
    }
}
