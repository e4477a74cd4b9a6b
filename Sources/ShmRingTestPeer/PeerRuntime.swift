import CShmLinux
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Process-wide set-up of a peer: the lifeline and the ready channel.
enum PeerRuntime {
    /// Starts the lifeline watcher: a thread blocked in `read` on the lifeline pipe, which returns
    /// (EOF) when the test process closes its end or dies; the peer then exits with status 70.
    /// `PR_SET_PDEATHSIG` would not do: it fires when the parent *thread* exits, and Swift
    /// Testing's threads come and go.
    static func start() {
        signal(SIGPIPE, SIG_IGN)
        guard let text = getenv("SHMRING_LIFELINE_FD"), let fd = Int32(String(cString: text)) else { return }
        var thread = pthread_t()
        let box = UnsafeMutablePointer<Int32>.allocate(capacity: 1)
        box.pointee = fd
        pthread_create(
            &thread, nil,
            { argument in
                let fd = argument!.assumingMemoryBound(to: Int32.self).pointee
                var byte: UInt8 = 0
                while true {
                    let n = read(fd, &byte, 1)
                    if n < 0 && errno == EINTR { continue }
                    if n <= 0 { _exit(70) }
                }
            }, box)
        pthread_detach(thread)
    }

    /// Tells the test that a step is done: writes `line` and a newline to SHMRING_READY_FD.
    static func ready(_ line: String) {
        guard let text = getenv("SHMRING_READY_FD"), let fd = Int32(String(cString: text)) else { return }
        let bytes = Array((line + "\n").utf8)
        _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    }

    /// Prints a result line on stdout, unbuffered.
    static func report(_ line: String) {
        let bytes = Array((line + "\n").utf8)
        _ = bytes.withUnsafeBytes { write(1, $0.baseAddress, $0.count) }
    }

    /// Prints `message` on stderr and exits with status 2.
    static func fail(_ message: String) -> Never {
        let bytes = Array(("shmring-test-peer: " + message + "\n").utf8)
        _ = bytes.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
        exit(2)
    }

    /// Sets both the soft and the hard limit of `resource`, or fails the peer.
    static func setLimit(_ resource: __rlimit_resource, _ name: String, to value: Int) {
        var limit = rlimit(rlim_cur: rlim_t(value), rlim_max: rlim_t(value))
        guard setrlimit(__rlimit_resource_t(resource.rawValue), &limit) == 0 else {
            fail("setrlimit(\(name)): errno \(errno)")
        }
    }

    /// Blocks until the lifeline closes (the test kills us, or goes away).
    static func parkForever() -> Never {
        while true { pause() }
    }
}

/// `--name value` options.
struct PeerOptions {
    private var values: [String: String] = [:]

    init(_ arguments: [String]) {
        var index = 0
        while index < arguments.count {
            let key = arguments[index]
            guard key.hasPrefix("--") else { PeerRuntime.fail("unexpected argument \(key)") }
            let value = index + 1 < arguments.count ? arguments[index + 1] : ""
            values[String(key.dropFirst(2))] = value
            index += 2
        }
    }

    func string(_ name: String) -> String {
        guard let value = values[name] else { PeerRuntime.fail("missing --\(name)") }
        return value
    }

    func int(_ name: String) -> Int {
        guard let value = Int(string(name)) else { PeerRuntime.fail("--\(name) must be an integer") }
        return value
    }

    func int(_ name: String, default fallback: Int) -> Int {
        values[name] == nil ? fallback : int(name)
    }

    func has(_ name: String) -> Bool { values[name] != nil }

    func descriptor(_ name: String) -> FileDescriptor { FileDescriptor(rawValue: Int32(int(name))) }
}
