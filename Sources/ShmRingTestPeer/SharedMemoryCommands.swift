import ShmRing
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Peer scenarios for `SharedMemory`.
enum SharedMemoryCommands {
    static func namespace(_ options: PeerOptions) -> KeyNamespace {
        options.has("namespace") ? .directory(options.string("namespace")) : .abstract
    }

    /// Reports a `SharedMemoryError` as `error_code=` and `error=` lines.
    static func report(_ error: SharedMemoryError) {
        PeerRuntime.report("error_code=\(error.code)")
        PeerRuntime.report("error=\(error)")
    }

    /// `--key K --size N [--writers creator|attachers] [--allow-uid U] [--fill BYTE]
    /// [--namespace DIR] [--spare-descriptors N] [--handshake-ms MS]`: creates the segment, fills it, says "created" and
    /// serves until killed (or until its lifeline closes). Reports `segment_id=` or the error.
    static func create(_ options: PeerOptions) throws {
        // SIGUSR1 (report and stop) is blocked in every thread from the start, the server's
        // included, and taken with sigwait below: no window in which it could be lost or kill us.
        var stopSignal = sigset_t()
        sigemptyset(&stopSignal)
        sigaddset(&stopSignal, SIGUSR1)
        pthread_sigmask(SIG_BLOCK, &stopSignal, nil)
        var policy = AccessPolicy()
        if options.has("writers") {
            switch options.string("writers") {
            case "creator": policy.writers = .creatorOnly
            case "attachers": policy.writers = .attachers
            default: PeerRuntime.fail("--writers creator|attachers")
            }
        }
        if options.has("allow-uid") { policy.allowedUsers.insert(uid_t(options.int("allow-uid"))) }
        let memory = SharedMemory(key: options.string("key"), namespace: namespace(options))
        if options.has("handshake-ms") { memory.handshakeTimeout = .milliseconds(options.int("handshake-ms")) }
        do {
            try memory.create(size: options.int("size"), policy: policy)
        } catch {
            report(error)
            return
        }
        if options.has("fill") {
            let byte = UInt8(truncatingIfNeeded: options.int("fill"))
            try memory.withUnsafeMutableBytes { _ = $0.initializeMemory(as: UInt8.self, repeating: byte) }
        }
        if options.has("spare-descriptors") {
            // Room for that many more descriptors above the highest one open now (and any holes
            // below it).
            let limit = Int(PeerCommands.highestDescriptor()) + 1 + options.int("spare-descriptors")
            PeerRuntime.report("nofile_limit=\(limit)")
            PeerRuntime.setLimit(RLIMIT_NOFILE, "RLIMIT_NOFILE", to: limit)
        }
        PeerRuntime.report("segment_id=\(memory.segmentID!)")
        PeerRuntime.ready("created")
        // Serve until SIGUSR1 (report the server's counters and stop), or until killed.
        var received: Int32 = 0
        while sigwait(&stopSignal, &received) != 0 {}
        if let statistics = memory.serverStatistics {
            PeerRuntime.report("served=\(statistics.served)")
            PeerRuntime.report("accept_backoffs=\(statistics.acceptBackoffs)")
            PeerRuntime.report("bad_requests=\(statistics.badRequests)")
        }
        memory.detach()
    }

    /// `--key K --mode ro|rw [--write BYTE] [--hold 1] [--namespace DIR] [--trust-uid U]`: attaches, reports
    /// `size=`, `first_byte=` and `segment_id=`; with `--write`, stores BYTE at offset 0 through
    /// the raw pointer (on a read-only mapping: SIGSEGV); with `--hold`, says "attached" and waits
    /// to be killed.
    static func attach(_ options: PeerOptions) throws {
        let memory = SharedMemory(key: options.string("key"), namespace: namespace(options))
        let mode: AccessMode = options.string("mode") == "ro" ? .readOnly : .readWrite
        if options.has("trust-uid") { memory.trustedCreators.insert(uid_t(options.int("trust-uid"))) }
        do {
            try memory.attach(mode: mode)
        } catch {
            report(error)
            return
        }
        PeerRuntime.report("size=\(memory.size)")
        PeerRuntime.report("segment_id=\(memory.segmentID!)")
        PeerRuntime.report("first_byte=\(memory.data!.load(as: UInt8.self))")
        if options.has("write") {
            memory.data!.storeBytes(of: UInt8(truncatingIfNeeded: options.int("write")), as: UInt8.self)
            PeerRuntime.report("wrote=1")
        }
        if options.has("hold") {
            PeerRuntime.ready("attached")
            PeerRuntime.parkForever()
        }
        memory.detach()
    }
}
