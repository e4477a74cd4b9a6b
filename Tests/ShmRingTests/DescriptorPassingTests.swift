import Testing
import SystemPackage

@testable import ShmRing

#if canImport(Glibc)
import Glibc
#endif

@Suite struct DescriptorPassingTests {
    /// The inode behind a descriptor: equal for two descriptors of the same file.
    func inode(_ descriptor: FileDescriptor) -> UInt {
        var status = stat()
        _ = fstat(descriptor.rawValue, &status)
        return UInt(status.st_ino)
    }

    @Test func severalDescriptorsAndAPayloadArriveTogether() throws {
        let (left, right) = try makeSocketPair()
        defer { left.closeIgnoringErrors(); right.closeIgnoringErrors() }
        let segments = try (0..<3).map { try Segment.create(name: "pass-\($0)", size: 4096) }
        for (index, segment) in segments.enumerated() { segment.bytes![0] = UInt8(index + 1) }
        let payload: [UInt8] = Array("three segments".utf8)
        try DescriptorPassing.send(payload, descriptors: segments.map(\.descriptor), on: left)

        let message = try DescriptorPassing.receive(on: right, capacity: 64, maximumDescriptors: 8)
        #expect(message.payload == payload)
        #expect(message.descriptors.count == 3)
        for (index, descriptor) in message.descriptors.enumerated() {
            #expect(inode(descriptor) == inode(segments[index].descriptor))
            #expect(fcntl(descriptor.rawValue, F_GETFD) & FD_CLOEXEC != 0, "received with MSG_CMSG_CLOEXEC")
            let mapped = try Segment.attach(descriptor: descriptor, size: 4096, access: .readOnly)
            #expect(mapped.bytes![0] == UInt8(index + 1))
        }
    }

    @Test func theMostDescriptorsOneMessageCarries() throws {
        let (left, right) = try makeSocketPair()
        defer { left.closeIgnoringErrors(); right.closeIgnoringErrors() }
        let descriptors = Array(repeating: left, count: DescriptorPassing.maximumDescriptors)
        try DescriptorPassing.send([1], descriptors: descriptors, on: left)
        let message = try DescriptorPassing.receive(
            on: right, capacity: 1, maximumDescriptors: DescriptorPassing.maximumDescriptors)
        #expect(message.descriptors.count == DescriptorPassing.maximumDescriptors)
        for descriptor in message.descriptors { descriptor.closeIgnoringErrors() }
        #expect(throws: SystemCallError("sendmsg(SCM_RIGHTS)", .invalidArgument)) {
            try DescriptorPassing.send([1], descriptors: descriptors + [left], on: left)
        }
    }

    @Test func moreDescriptorsThanExpectedIsDetectedAndNothingLeaks() throws {
        let (left, right) = try makeSocketPair()
        defer { left.closeIgnoringErrors(); right.closeIgnoringErrors() }
        let marker = try Segment.create(name: "marker-\(UInt64.random(in: 0...UInt64.max))", size: 1)
        try DescriptorPassing.send([7], descriptors: Array(repeating: marker.descriptor, count: 3), on: left)
        #expect(throws: ReceiveError.descriptorsTruncated(received: 1, maximum: 1)) {
            try DescriptorPassing.receive(on: right, capacity: 16, maximumDescriptors: 1)
        }
        #expect(descriptorsOpen(on: marker) == 1, "the descriptor that did arrive was closed")
    }

    @Test func aLongerPayloadIsDetected() throws {
        let (left, right) = try makeSocketPair()
        defer { left.closeIgnoringErrors(); right.closeIgnoringErrors() }
        let marker = try Segment.create(name: "marker-\(UInt64.random(in: 0...UInt64.max))", size: 1)
        try DescriptorPassing.send([UInt8](repeating: 9, count: 100), descriptors: [marker.descriptor], on: left)
        #expect(throws: ReceiveError.payloadTruncated(length: 10, capacity: 10)) {
            try DescriptorPassing.receive(on: right, capacity: 10, maximumDescriptors: 4)
        }
        #expect(descriptorsOpen(on: marker) == 1, "the descriptor that did arrive was closed")
    }

    @Test func aVanishedPeerIsAnErrorNotASignal() throws {
        let (left, right) = try makeSocketPair()
        defer { left.closeIgnoringErrors() }
        right.closeIgnoringErrors()
        // Without MSG_NOSIGNAL this would raise SIGPIPE and end the test process.
        #expect(throws: SystemCallError("sendmsg", .brokenPipe)) {
            try DescriptorPassing.send([1], on: left)
        }
        #expect(throws: ReceiveError.peerClosed) {
            try DescriptorPassing.receive(on: left, capacity: 8)
        }
    }

    @Test func credentialsOfTheOtherEnd() throws {
        let (left, right) = try makeSocketPair()
        defer { left.closeIgnoringErrors(); right.closeIgnoringErrors() }
        let credentials = try PeerCredentials.of(right)
        #expect(credentials.pid == getpid())
        #expect(credentials.uid == geteuid())
        #expect(credentials.gid == getegid())
        var groups = [gid_t](repeating: 0, count: 256)
        let count = getgroups(Int32(groups.count), &groups)
        #expect(Set(credentials.groups) == Set(groups.prefix(Int(count))))
        let pidFD = try PeerCredentials.pidFD(of: right)
        defer { pidFD.closeIgnoringErrors() }
        #expect(pidFD.rawValue >= 0)
    }
}

extension MultiProcess {
    @Suite struct DescriptorLimitTests {
        /// A receiver whose descriptor table is full gets MSG_CTRUNC: a typed error, and the
        /// descriptors that did arrive are closed (the peer reports, then exits normally).
        @Test func aFullDescriptorTableIsDetectedOnReceive() throws {
            let (left, right) = try makeSocketPair()
            defer { left.closeIgnoringErrors() }
            let peer = try ChildProcess(
                TestPeer.debug,
                [
                    "receive-descriptors", "--socket-fd", "\(ChildProcess.childDescriptor(0))", "--maximum", "64",
                    "--nofile-limit", "16",
                ],
                inheriting: [right])
            right.closeIgnoringErrors()
            try DescriptorPassing.send([1], descriptors: Array(repeating: left, count: 40), on: left)
            #expect(peer.wait() == .exited(0), "\(peer.standardError)")
            let error = try #require(peer.results["error"])
            #expect(error.hasPrefix("descriptors truncated"), "\(error)")
            #expect(peer.results["open_after"] == peer.results["open_before"], "what arrived was closed")
        }
    }
}
