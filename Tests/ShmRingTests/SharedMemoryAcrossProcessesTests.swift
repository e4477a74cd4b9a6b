import SystemPackage
import Testing

@testable import ShmRing

#if canImport(Glibc)
import Glibc
#endif

/// `Shmem` of /proc/meminfo, in bytes: every shared-memory page on the machine, so tests running
/// beside this one move it too; compare it only with margins far above what they allocate.
func shmemBytes() -> Int {
    for line in (readSmallFile("/proc/meminfo") ?? "").split(separator: "\n") where line.hasPrefix("Shmem:") {
        let fields = line.split(separator: " ")
        return (Int(fields[1]) ?? 0) * 1024
    }
    return 0
}

/// The numeric entries of a /proc directory (`/proc` itself, or `/proc/PID/fd`).
private func numericEntries(of directory: String) -> [String] {
    guard let stream = opendir(directory) else { return [] }
    defer { closedir(stream) }
    var names: [String] = []
    while let entry = readdir(stream) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        if Int(name) != nil { names.append(name) }
    }
    return names
}

/// Descriptors (`PID/fd/N`) whose link names `memfd:NAME`.
func holdersOfMemfd(named name: String) -> [String] {
    var holders: [String] = []
    for pid in numericEntries(of: "/proc") {
        for number in numericEntries(of: "/proc/\(pid)/fd") {
            var link = [CChar](repeating: 0, count: 4096)
            let n = readlink("/proc/\(pid)/fd/\(number)", &link, link.count - 1)
            if n > 0,
                String(decoding: link[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self).hasPrefix("/memfd:\(name) ")
            {
                holders.append("\(pid)/fd/\(number)")
            }
        }
    }
    return holders
}

/// Processes with a mapping of `memfd:NAME` (a mapping keeps the memory alive without a descriptor).
func mappersOfMemfd(named name: String) -> [String] {
    numericEntries(of: "/proc").filter { pid in
        (readSmallFile("/proc/\(pid)/maps") ?? "").contains("/memfd:\(name) ")
    }
}

/// The memory the file behind descriptor `holder` (`PID/fd/N`) holds: its allocated blocks.
func allocatedBytes(ofDescriptor holder: String) -> Int? {
    var status = stat()
    guard stat("/proc/\(holder)", &status) == 0 else { return nil }
    return Int(status.st_blocks) * 512
}

extension MultiProcess {
    @Suite struct SharedMemoryAcrossProcessesTests {
        @Test func dataWrittenByOneProcessIsReadByAnother() throws {
            // Another process creates and fills; this one attaches and reads.
            let key = uniqueKey()
            let creator = try ChildProcess(
                TestPeer.debug, ["shm-create", "--key", key, "--size", "5000", "--fill", "171"])
            try #require(creator.waitForReady("created"))
            let memory = SharedMemory(key: key)
            try memory.attach()
            #expect(memory.size == 5000)
            #expect(try memory.withUnsafeBytes { $0.allSatisfy { $0 == 171 } })
            #expect(memory.creatorPID == creator.pid)
            #expect(creator.results["segment_id"] == memory.segmentID?.description)

            // This one creates; another attaches and writes; this one reads it.
            let mine = SharedMemory(key: uniqueKey())
            try mine.create(size: 100)
            let writer = try ChildProcess(
                TestPeer.debug, ["shm-attach", "--key", mine.key, "--mode", "rw", "--write", "99"])
            #expect(writer.wait() == .exited(0), "\(writer.standardError)")
            #expect(writer.results["wrote"] == "1")
            #expect(try mine.withUnsafeBytes { $0[0] } == 99)
        }

        @Test func writingThroughAReadOnlyAttachmentOfACreatorOnlySegmentIsSIGSEGV() throws {
            let key = uniqueKey()
            let creator = try ChildProcess(
                TestPeer.debug, ["shm-create", "--key", key, "--size", "4096", "--writers", "creator", "--fill", "1"])
            try #require(creator.waitForReady("created"))
            let writer = try ChildProcess(
                TestPeer.debug, ["shm-attach", "--key", key, "--mode", "ro", "--write", "2"], expectCrash: true)
            #expect(writer.wait() == .signaled(SIGSEGV), "\(writer.standardOutput)")
            #expect(writer.results["first_byte"] == "1", "it attached and read before writing")
            #expect(writer.results["wrote"] == nil)
            let readWrite = try ChildProcess(TestPeer.debug, ["shm-attach", "--key", key, "--mode", "rw"])
            #expect(readWrite.wait() == .exited(0))
            #expect(readWrite.results["error_code"] == "permissionDenied")
        }

        /// 256 MiB held by a creator and two attachers, all SIGKILLed: the kernel frees it.
        ///
        /// The segment's own size is read from its file (allocated blocks), not from the machine's
        /// `Shmem`, which the tests running beside this one move by megabytes in either direction
        /// (a run once saw it grow by 8.5 MiB less than the segment). After the kill, no descriptor
        /// and no mapping of it remain, and `Shmem` falls by at least half the segment.
        @Test func memoryIsFreedWhenEveryHolderIsKilled() throws {
            let key = uniqueKey()
            let size = 256 << 20
            let creator = try ChildProcess(
                TestPeer.debug, ["shm-create", "--key", key, "--size", "\(size)", "--fill", "1"], expectCrash: true)
            try #require(creator.waitForReady("created"))
            let attachers = try (0..<2).map { _ in
                try ChildProcess(
                    TestPeer.debug, ["shm-attach", "--key", key, "--mode", "ro", "--hold", "1"], expectCrash: true)
            }
            for attacher in attachers { try #require(attacher.waitForReady("attached")) }
            let holders = holdersOfMemfd(named: "shmring:\(key)")
            #expect(holders.count >= 3)
            let allocated = try #require(holders.first.flatMap(allocatedBytes(ofDescriptor:)))
            #expect(allocated >= size, "the creator's fill allocated every page: \(allocated) bytes")
            #expect(mappersOfMemfd(named: "shmring:\(key)").count >= 3)
            let held = shmemBytes()

            for process in [creator] + attachers {
                process.signal(SIGKILL)
                #expect(process.wait() == .signaled(SIGKILL))
            }
            // The kernel frees the pages when the last descriptor and mapping go; poll up to 5 s.
            let deadline = ContinuousClock.now + .seconds(5)
            var after = shmemBytes()
            while held - after < size / 2 && ContinuousClock.now < deadline {
                usleep(20_000)
                after = shmemBytes()
            }
            print("Shmem: held \(held >> 20) MiB, after kill -9 \(after >> 20) MiB (segment \(size >> 20) MiB)")
            #expect(holdersOfMemfd(named: "shmring:\(key)").isEmpty)
            #expect(mappersOfMemfd(named: "shmring:\(key)").isEmpty)
            #expect(held - after >= size / 2, "Shmem fell by the segment: \(held) -> \(after)")
            expectError(.notFound) { try SharedMemory(key: key).attach() }
        }

        @Test func aCrashedCreatorsDirectoryNameIsClearedByTheNextCreatorAndByRemove() throws {
            let directory = "/tmp/shmring-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
            #expect(mkdir(directory, 0o700) == 0)
            defer { rmdir(directory) }
            let key = "crashed"
            for clearWithRemove in [true, false] {
                let creator = try ChildProcess(
                    TestPeer.debug, ["shm-create", "--key", key, "--size", "64", "--namespace", directory],
                    expectCrash: true)
                try #require(creator.waitForReady("created"))
                creator.signal(SIGKILL)
                creator.wait()
                #expect(access("\(directory)/\(key).sock", F_OK) == 0, "the crash left the socket file")
                expectError(.notFound) { try SharedMemory(key: key, namespace: .directory(directory)).attach() }
                if clearWithRemove {
                    try SharedMemory.remove(key: key, namespace: .directory(directory))
                    #expect(access("\(directory)/\(key).sock", F_OK) != 0)
                    #expect(access("\(directory)/\(key).lock", F_OK) != 0)
                } else {
                    let next = SharedMemory(key: key, namespace: .directory(directory))
                    try next.create(size: 64)
                    #expect(next.isAttached)
                    next.detach()
                }
            }
        }

        /// A server whose descriptor table is full backs off instead of spinning, and recovers.
        @Test func aFullDescriptorTableOnTheServer() throws {
            let key = uniqueKey()
            let creator = try ChildProcess(
                TestPeer.debug,
                ["shm-create", "--key", key, "--size", "64", "--spare-descriptors", "8", "--handshake-ms", "600000"])
            try #require(creator.waitForReady("created"))
            // Silent connections until the server cannot accept any more (it has room for about 8).
            let hogs = try (0..<40).map { _ in try rawConnection(to: key) }
            let blocked = SharedMemory(key: key)
            blocked.handshakeTimeout = .seconds(1)
            expectError(.unknown) { try blocked.attach() }  // no reply: the table is full
            for hog in hogs { hog.closeIgnoringErrors() }
            // The server drops the hogs as they hang up and serves again.
            let memory = SharedMemory(key: key)
            memory.handshakeTimeout = .seconds(60)
            #expect(throws: Never.self) { try memory.attach() }
            memory.detach()
            creator.signal(SIGUSR1)
            #expect(creator.wait() == .exited(0), "\(creator.standardError)")
            let backoffs = try #require(creator.results["accept_backoffs"].flatMap(Int.init))
            // At 50 ms per back-off, about 20 in the second of the blocked attach (plus the time to
            // connect); a spinning server would count millions.
            #expect(backoffs >= 1 && backoffs < 2000, "\(backoffs) back-offs; \(creator.standardOutput)")
        }
    }

    /// Credentials across users. CI runs as root with `setpriv`: these tests fail, not skip, there.
    @Suite final class SharedMemoryAcrossUsersTests {
        /// Removes the copy of the peer made for uid 65534 (each test gets its own instance).
        deinit {
            unlink("\(Self.copyDirectory)/shmring-test-peer")
            rmdir(Self.copyDirectory)
        }

        static var copyDirectory: String { "/tmp/shmring-nobody-\(getpid())" }

        static let nobody = "65534"
        static var canSwitchUsers: Bool { geteuid() == 0 && access("/usr/bin/setpriv", X_OK) == 0 }

        /// The peer, run as uid/gid 65534 without supplementary groups. It runs from a copy in a
        /// world-readable directory: the checkout may sit below a directory that user cannot
        /// enter (its Swift libraries are found by absolute runpath, so the copy runs as is).
        func asNobody(_ arguments: [String]) throws -> ChildProcess {
            let directory = Self.copyDirectory
            let copy = "\(directory)/shmring-test-peer"
            if access(copy, X_OK) != 0 {
                mkdir(directory, 0o755)
                let cp = try ChildProcess("/bin/cp", [TestPeer.debug, copy])
                try #require(cp.wait() == .exited(0), "\(cp.standardError)")
                chmod(directory, 0o755)
                chmod(copy, 0o755)
            }
            return try ChildProcess(
                "/usr/bin/setpriv",
                ["--reuid=\(Self.nobody)", "--regid=\(Self.nobody)", "--clear-groups", copy] + arguments)
        }

        @Test(.enabled(if: canSwitchUsers, "needs root and setpriv")) func anotherUserCannotAttach() throws {
            let memory = SharedMemory(key: uniqueKey())
            try memory.create(size: 64)
            // The stranger trusts root, so only the creator's policy can refuse it.
            let stranger = try asNobody(["shm-attach", "--key", memory.key, "--mode", "ro", "--trust-uid", "0"])
            #expect(stranger.wait() == .exited(0), "\(stranger.standardError)")
            #expect(stranger.results["error_code"] == "permissionDenied", "\(stranger.results)")
            #expect(memory.serverStatistics?.refused == 1, "refused by the creator's policy")
        }

        @Test(.enabled(if: canSwitchUsers, "needs root and setpriv")) func aKeySquattedByAnotherUserIsRefused() throws {
            let key = uniqueKey()
            // The squatter even admits root, so only the client's own check can refuse it.
            let squatter = try asNobody(["shm-create", "--key", key, "--size", "64", "--allow-uid", "0"])
            try #require(squatter.waitForReady("created"))
            let memory = SharedMemory(key: key)
            let error = expectError(.permissionDenied) { try memory.attach() }
            #expect(error?.message.contains("uid 65534") == true)
            // And creating under the squatted key is refused too: nobody can serve it twice.
            expectError(.alreadyExists) { try SharedMemory(key: key).create(size: 64) }
            // Trusting that user explicitly works.
            let trusting = SharedMemory(key: key)
            trusting.trustedCreators.insert(65534)
            #expect(throws: Never.self) { try trusting.attach(mode: .readOnly) }
        }

        /// Where root and setpriv are present, the two tests above must run.
        @Test func credentialTestsRunAsRoot() {
            if getenv("CI") != nil {
                #expect(Self.canSwitchUsers, "CI runs as root with setpriv: the cross-user tests must run")
            }
        }
    }
}
