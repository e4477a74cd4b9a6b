import CShmLinux
import CShmTestSupport
import ShmRing
import SystemPackage
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A process spawned by a test, bounded in time and tied to the test process.
///
/// The one way tests start processes (docs/testing.md):
/// - `posix_spawn` (never `fork` without `exec` in a multithreaded runner), in a process group of
///   its own, signals reset to their defaults;
/// - a lifeline pipe on descriptor 3 (`SHMRING_LIFELINE_FD`): the test holds the write end, so the
///   child sees EOF and exits when the test process dies, however it dies;
/// - a ready pipe on descriptor 4 (`SHMRING_READY_FD`): the child writes a line when it reached a
///   step, and `waitForReady` reads it; synchronisation by events, never by sleeping;
/// - inherited descriptors at 10, 11, ... in the order given (`childDescriptor(_:)`), and no other
///   descriptor (`posix_spawn_file_actions_addclosefrom_np`);
/// - stdout and stderr into temporary files (no pipe to fill up and block the child);
/// - `SWIFT_BACKTRACE=enable=no` for children expected to crash, and RLIMIT_CORE=0 for all
///   (set on the test process once, inherited);
/// - `wait(deadline:)` waits on a pidfd, and at the deadline kills the whole process group and
///   fails the test; `deinit` kills and reaps too, so no child outlives its test.
final class ChildProcess {
    enum Status: Equatable, CustomStringConvertible {
        case exited(Int32)
        case signaled(Int32)

        var description: String {
            switch self {
            case .exited(let code): "exited with status \(code)"
            case .signaled(let signal): "killed by signal \(signal) (\(String(cString: strsignal(signal))))"
            }
        }
    }

    /// The descriptor number at which the child finds the `index`th inherited descriptor.
    static func childDescriptor(_ index: Int) -> Int32 { Int32(10 + index) }

    let pid: pid_t
    let command: String
    private var lifeline: FileDescriptor?
    private let ready: FileDescriptor
    private let pidFD: FileDescriptor
    private let outputPath: String
    private let errorPath: String
    private var readyBuffer: [UInt8] = []
    private(set) var status: Status?

    /// Spawns `executable` with `arguments`.
    ///
    /// - Parameters:
    ///   - inheriting: descriptors the child receives at 10, 11, ...
    ///   - environment: added to (or replacing in) the test process's environment.
    ///   - expectCrash: sets `SWIFT_BACKTRACE=enable=no`, so a crash ends at once without a
    ///     backtrace that takes seconds to print.
    init(
        _ executable: String, _ arguments: [String], inheriting: [FileDescriptor] = [],
        environment: [String: String] = [:], expectCrash: Bool = false
    ) throws {
        ChildProcess.limitCoreDumps
        command = ([executable] + arguments).joined(separator: " ")
        // Close-on-exec pipes (pipe2): otherwise every later child would inherit this child's
        // lifeline write end, and the lifeline would never close.
        let lifelinePipe = try Self.pipe()
        let readyPipe: (readEnd: FileDescriptor, writeEnd: FileDescriptor)
        do {
            readyPipe = try Self.pipe()
        } catch {
            lifelinePipe.readEnd.closeIgnoringErrors()
            lifelinePipe.writeEnd.closeIgnoringErrors()
            throw error
        }
        // Until the spawn succeeds, every descriptor made here is closed on the way out.
        var spawned = false
        defer {
            lifelinePipe.readEnd.closeIgnoringErrors()
            readyPipe.writeEnd.closeIgnoringErrors()
            if !spawned {
                lifelinePipe.writeEnd.closeIgnoringErrors()
                readyPipe.readEnd.closeIgnoringErrors()
            }
        }
        // Every descriptor the child gets is first copied to 100 or above (close-on-exec), so
        // that no dup2 below has equal source and target (which would leave close-on-exec set).
        var staged: [FileDescriptor] = []
        defer { for descriptor in staged { descriptor.closeIgnoringErrors() } }
        func stage(_ descriptor: FileDescriptor) throws -> Int32 {
            let copy = fcntl(descriptor.rawValue, F_DUPFD_CLOEXEC, 100)
            guard copy >= 0 else { throw SystemCallError("fcntl(F_DUPFD_CLOEXEC)", Errno(rawValue: errno)) }
            staged.append(FileDescriptor(rawValue: copy))
            return copy
        }
        let unique = UInt64.random(in: 0...UInt64.max)
        outputPath = "/tmp/shmring-test-\(getpid())-\(unique).out"
        errorPath = "/tmp/shmring-test-\(getpid())-\(unique).err"

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, outputPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_addopen(&actions, 2, errorPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_adddup2(&actions, try stage(lifelinePipe.readEnd), 3)
        posix_spawn_file_actions_adddup2(&actions, try stage(readyPipe.writeEnd), 4)
        for (index, descriptor) in inheriting.enumerated() {
            posix_spawn_file_actions_adddup2(&actions, try stage(descriptor), ChildProcess.childDescriptor(index))
        }
        // Nothing else: the test runner has descriptors without close-on-exec (seen: 251), which
        // a child would otherwise inherit.
        CShmTestSupport_spawn_add_close_from(&actions, ChildProcess.childDescriptor(inheriting.count))

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var defaultSignals = sigset_t()
        sigfillset(&defaultSignals)
        var emptyMask = sigset_t()
        sigemptyset(&emptyMask)
        posix_spawnattr_setsigdefault(&attributes, &defaultSignals)
        posix_spawnattr_setsigmask(&attributes, &emptyMask)
        posix_spawnattr_setpgroup(&attributes, 0)
        posix_spawnattr_setflags(
            &attributes, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))

        var variables: [String: String] = [:]
        var cursor = environ
        while let entry = cursor.pointee {
            let text = String(cString: entry)
            if let equals = text.firstIndex(of: "=") {
                variables[String(text[..<equals])] = String(text[text.index(after: equals)...])
            }
            cursor += 1
        }
        variables["SHMRING_LIFELINE_FD"] = "3"
        variables["SHMRING_READY_FD"] = "4"
        if expectCrash { variables["SWIFT_BACKTRACE"] = "enable=no" }
        for (key, value) in environment { variables[key] = value }
        let environmentStrings = variables.map { "\($0.key)=\($0.value)" }

        var pid: pid_t = 0
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp = environmentStrings.map { strdup($0) } + [nil]
        defer {
            for pointer in argv { free(pointer) }
            for pointer in envp { free(pointer) }
        }
        let rc = posix_spawn(&pid, executable, &actions, &attributes, argv, envp)
        guard rc == 0 else { throw SystemCallError("posix_spawn(\(executable))", Errno(rawValue: rc)) }
        let pidFD: FileDescriptor
        do {
            pidFD = try openPidFD(pid)
        } catch {
            // Not an object yet, so no deinit: kill and reap here.
            kill(-pid, SIGKILL)
            var raw: Int32 = 0
            while waitpid(pid, &raw, 0) < 0 && errno == EINTR {}
            throw error
        }
        spawned = true
        self.pid = pid
        self.lifeline = lifelinePipe.writeEnd
        self.ready = readyPipe.readEnd
        self.pidFD = pidFD
    }

    private static func pipe() throws -> (readEnd: FileDescriptor, writeEnd: FileDescriptor) {
        var fds: [Int32] = [-1, -1]
        guard CShmLinux_pipe_cloexec(&fds) == 0 else { throw SystemCallError("pipe2", Errno(rawValue: errno)) }
        return (FileDescriptor(rawValue: fds[0]), FileDescriptor(rawValue: fds[1]))
    }

    deinit {
        if status == nil {
            kill(-pid, SIGKILL)
            var raw: Int32 = 0
            while waitpid(pid, &raw, 0) < 0 && errno == EINTR {}
        }
        lifeline?.closeIgnoringErrors()
        ready.closeIgnoringErrors()
        pidFD.closeIgnoringErrors()
        unlink(outputPath)
        unlink(errorPath)
    }

    /// Waits for the child to end, at most `timeout`; past it, kills its process group and
    /// records a test failure.
    @discardableResult
    func wait(timeout: Duration = .seconds(60), sourceLocation: SourceLocation = #_sourceLocation) -> Status {
        if let status { return status }
        if !ChildProcess.poll(pidFD, timeout: timeout) {
            Issue.record("\(command) did not finish within \(timeout); killed", sourceLocation: sourceLocation)
            kill(-pid, SIGKILL)
        }
        var raw: Int32 = 0
        while waitpid(pid, &raw, 0) < 0 && errno == EINTR {}
        // Decoded by hand: WIFEXITED and friends are macros Swift does not import.
        let signal = raw & 0x7f
        let status: Status = signal == 0 ? .exited((raw >> 8) & 0xff) : .signaled(signal)
        self.status = status
        lifeline?.closeIgnoringErrors()
        lifeline = nil
        return status
    }

    /// Whether the child has ended (without reaping it; `wait` does that).
    var hasEnded: Bool { status != nil || ChildProcess.poll(pidFD, timeout: .zero) }

    /// Sends `signal` to the child.
    func signal(_ signal: Int32) {
        guard status == nil else { return }
        kill(pid, signal)
    }

    /// Reads lines from the ready pipe until one equals `line`, at most `timeout`. Returns false
    /// (and records a failure) if the child ended first or the time ran out.
    @discardableResult
    func waitForReady(
        _ line: String, timeout: Duration = .seconds(60), sourceLocation: SourceLocation = #_sourceLocation
    ) -> Bool {
        let deadline = ContinuousClock.now + timeout
        while true {
            if let newline = readyBuffer.firstIndex(of: UInt8(ascii: "\n")) {
                let text = String(decoding: readyBuffer[..<newline], as: UTF8.self)
                readyBuffer.removeSubrange(...newline)
                if text == line { return true }
                continue
            }
            let remaining = deadline - ContinuousClock.now
            guard remaining > .zero, ChildProcess.poll(ready, timeout: remaining) else {
                Issue.record("\(command) did not say \"\(line)\" within \(timeout)", sourceLocation: sourceLocation)
                return false
            }
            var chunk = [UInt8](repeating: 0, count: 256)
            let n = chunk.withUnsafeMutableBytes { read(ready.rawValue, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else {
                Issue.record(
                    "\(command) ended before saying \"\(line)\"; stderr: \(standardError)",
                    sourceLocation: sourceLocation)
                return false
            }
            readyBuffer += chunk[0..<n]
        }
    }

    /// What the child wrote to stdout so far.
    var standardOutput: String { readSmallFile(outputPath) ?? "" }
    /// What the child wrote to stderr so far.
    var standardError: String { readSmallFile(errorPath) ?? "" }

    /// The `key=value` lines of stdout, as a dictionary (the last value of a repeated key wins).
    var results: [String: String] {
        var values: [String: String] = [:]
        for line in standardOutput.split(separator: "\n") {
            guard let equals = line.firstIndex(of: "=") else { continue }
            values[String(line[..<equals])] = String(line[line.index(after: equals)...])
        }
        return values
    }

    /// Whether `descriptor` became readable within `timeout`.
    private static func poll(_ descriptor: FileDescriptor, timeout: Duration) -> Bool {
        let deadline = ContinuousClock.now + timeout
        while true {
            let remaining = deadline - ContinuousClock.now
            let milliseconds = max(
                0, remaining.components.seconds * 1000 + remaining.components.attoseconds / 1_000_000_000_000_000)
            var entry = pollfd(fd: descriptor.rawValue, events: Int16(POLLIN), revents: 0)
            let rc = Glibc.poll(&entry, 1, Int32(min(milliseconds, Int64(Int32.max))))
            if rc < 0 && errno == EINTR { continue }
            return rc > 0
        }
    }

    /// RLIMIT_CORE=0 for the test process and so for every child: crash tests must not write
    /// cores (or hand them to a core-dump service, which takes seconds).
    private static let limitCoreDumps: Void = {
        var none = rlimit(rlim_cur: 0, rlim_max: 0)
        setrlimit(__rlimit_resource_t(RLIMIT_CORE.rawValue), &none)
    }()
}

/// Where the test peer is.
enum TestPeer {
    /// The debug build, next to the test bundle (the test target depends on the peer, so
    /// `swift build` / `swift test` built it).
    static var debug: String {
        let executable = (try? readLink("/proc/self/exe")) ?? ""
        let directory = executable.split(separator: "/", omittingEmptySubsequences: false).dropLast()
            .joined(separator: "/")
        return directory + "/shmring-test-peer"
    }

    /// The release build made by scripts/test (`SHMRING_TEST_PEER_RELEASE`), for heavy loops;
    /// the debug build when the tests run without the script (slower, same results).
    static var forHeavyLoops: String {
        if let path = getenv("SHMRING_TEST_PEER_RELEASE") { return String(cString: path) }
        return debug
    }

    /// Whether heavy loops run in a release build.
    static var heavyLoopsAreOptimized: Bool { getenv("SHMRING_TEST_PEER_RELEASE") != nil }

    private static func readLink(_ path: String) throws -> String {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink(path, &buffer, buffer.count - 1)
        guard n > 0 else { throw SystemCallError("readlink", Errno(rawValue: errno)) }
        return String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// The parent of every suite that spawns processes: they run one at a time (docs/testing.md).
@Suite(.serialized) struct MultiProcess {}
