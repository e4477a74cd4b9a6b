import ArgumentParser
import CShmLinux
import ShmRing
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// `shmring demo`: two processes share a memfd segment and a robust lock.
///
/// The parent creates a segment and a lock, starts a second `shmring` process, hands it both
/// descriptors over a Unix socket (SCM_RIGHTS), and both increment a counter in the segment under
/// the lock. The total proves that no update was lost; the time per locked increment shows what
/// a contended cross-process lock costs on this machine.
struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Two processes increment a counter in shared memory under a robust lock.")

    @Option(help: "Locked increments per process.")
    var count: Int = 200_000

    @Flag(help: .hidden)
    var child = false

    func validate() throws {
        guard count > 0 else { throw ValidationError("--count must be positive, got \(count)") }
    }

    func run() throws {
        if child { try runChild() } else { try runParent() }
    }

    /// The payload that travels with the descriptors.
    struct Setup {
        var segmentSize: UInt64
        var count: UInt64

        var bytes: [UInt8] {
            withUnsafeBytes(of: (segmentSize.littleEndian, count.littleEndian)) { Array($0) }
        }

        init(segmentSize: UInt64, count: UInt64) {
            self.segmentSize = segmentSize
            self.count = count
        }

        init?(_ bytes: [UInt8]) {
            guard bytes.count == 16 else { return nil }
            let words = bytes.withUnsafeBytes {
                ($0.loadUnaligned(as: UInt64.self), $0.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
            }
            self.init(segmentSize: UInt64(littleEndian: words.0), count: UInt64(littleEndian: words.1))
        }
    }

    private func runParent() throws {
        let segment = try Segment.create(name: "shmring-demo", size: 64)
        let lock = try RobustLock.create(name: "shmring-demo-lock")
        print("parent \(getpid()): created a \(segment.size)-byte memfd segment and a robust lock")
        let (mine, theirs) = try makeSocketPair()
        defer { mine.closeIgnoringErrors() }
        let child = try spawnSelf(["demo", "--child"], socket: theirs)
        theirs.closeIgnoringErrors()
        try DescriptorPassing.send(
            Setup(segmentSize: UInt64(segment.size), count: UInt64(count)).bytes,
            descriptors: [segment.descriptor, lock.segment.descriptor], on: mine)

        let counter = segment.baseAddress!.assumingMemoryBound(to: UInt64.self)
        let start = ContinuousClock.now
        for _ in 0..<count {
            _ = try lock.lock()
            counter.pointee &+= 1  // ordered by the lock's acquire/release
            try lock.unlock()
        }
        // The child says "done" once its increments are in.
        _ = try DescriptorPassing.receive(on: mine, capacity: 16)
        let elapsed = ContinuousClock.now - start
        var status: Int32 = 0
        while waitpid(child, &status, 0) < 0 && errno == EINTR {}

        let total = try lock.withLock { _ in counter.pointee }
        let expected = UInt64(2 * count)
        let nanoseconds = Double(elapsed.components.seconds) * 1e9 + Double(elapsed.components.attoseconds) / 1e9
        print("2 processes x \(count) locked increments = \(total) (expected \(expected))")
        print("elapsed \(elapsed): \(Int(nanoseconds / Double(2 * count))) ns per locked increment")
        guard total == expected else { throw ExitCode.failure }
    }

    private func runChild() throws {
        let socket = FileDescriptor(rawValue: 3)
        let message = try DescriptorPassing.receive(on: socket, capacity: 16, maximumDescriptors: 2)
        guard let setup = Setup(message.payload), message.descriptors.count == 2 else {
            throw ValidationError("demo child: unexpected setup message")
        }
        let segment = try Segment.attach(
            descriptor: message.descriptors[0], size: Int(setup.segmentSize), access: .readWrite)
        let lock = try RobustLock.attach(descriptor: message.descriptors[1])
        let counter = segment.baseAddress!.assumingMemoryBound(to: UInt64.self)
        for _ in 0..<setup.count {
            _ = try lock.lock()
            counter.pointee &+= 1
            try lock.unlock()
        }
        print("child \(getpid()): attached through SCM_RIGHTS, \(setup.count) increments done")
        try DescriptorPassing.send(Array("done".utf8), on: socket)
    }

    /// Starts this executable again with `arguments`, `socket` as its descriptor 3.
    private func spawnSelf(_ arguments: [String], socket: FileDescriptor) throws -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        // The socket is close-on-exec; dup2 onto 3 clears that for the child (socket is never 3
        // here: 0-2 are the standard streams and the segment and lock memfds were opened first).
        posix_spawn_file_actions_adddup2(&actions, socket.rawValue, 3)
        let executable = "/proc/self/exe"
        let argv = (["shmring"] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, executable, &actions, nil, argv, environ)
        guard rc == 0 else { throw SystemCallError("posix_spawn", Errno(rawValue: rc)) }
        return pid
    }
}
