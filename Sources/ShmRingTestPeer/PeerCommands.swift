import CShmAtomics
import CShmLinux
import ShmRing
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The scenarios a test can ask of a peer.
enum PeerCommands {
    static let all: [String: @Sendable (PeerOptions) throws -> Void] = [
        "lock-increment": lockIncrement,
        "lock-hold": lockHold,
        "lock-once": lockOnce,
        "segment-create": segmentCreate,
        "store-buffering": StoreBuffering.run,
        "receive-descriptors": receiveDescriptors,
        "shm-create": SharedMemoryCommands.create,
        "shm-attach": SharedMemoryCommands.attach,
        "ring-produce": RingCommands.produce,
        "ring-consume": RingCommands.consume,
        "ring-churn": RingCommands.churn,
        "ring-consume-lossy": RingCommands.consumeLossy,
        "ring-stale-produce": StaleMemory.produce,
        "ring-stale-read": StaleMemory.read,
        "ring-stale-join": StaleMemory.join,
        "ring-fuzz-produce": RingFuzz.produce,
        "ring-fuzz-consume": RingFuzz.consume,
        "ring-hot-loop": HotPath.run,
        "ring-bench": RingBench.run,
        "ring-bench-child": RingBench.child,
        "ring-wait-consume": WakeCommands.consume,
        "ring-fan-out": WakeCommands.fanOut,
        "ring-idle-consume": WakeCommands.idleConsume,
        "ring-evict-produce": WakeCommands.evictProduce,
        "ring-wait-pingpong": WakeCommands.pingPong,
        "ring-doorbell-scribble": WakeCommands.scribbleDoorbell,
        "ring-reserve": FaultCommands.reserve,
        "ring-attach-limited": FaultCommands.attachLimited,
        "ring-create-limited": FaultCommands.createLimited,
    ]

    /// `--lock-fd N --data-fd M --count K`: K increments of the UInt64 at offset 0 of the data
    /// segment, each a separate load and store under the lock (a lost update shows as a short
    /// total).
    static func lockIncrement(_ options: PeerOptions) throws {
        let lock = try RobustLock.attach(descriptor: options.descriptor("lock-fd"))
        let data = try Segment.attach(descriptor: options.descriptor("data-fd"), size: 8, access: .readWrite)
        let counter = data.baseAddress!.assumingMemoryBound(to: UInt64.self)
        let count = options.int("count")
        PeerRuntime.ready("attached")
        for _ in 0..<count {
            _ = try lock.lock()
            // Plain accesses: only the lock orders them (its acquire and release are the
            // partners), which is what this test checks.
            let value = counter.pointee
            CShmAtomics_compiler_barrier()
            counter.pointee = value &+ 1
            try lock.unlock()
        }
        PeerRuntime.report("done=\(count)")
    }

    /// `--lock-fd N`: takes the lock, reports the outcome, says "locked" and waits to be killed.
    static func lockHold(_ options: PeerOptions) throws {
        let lock = try RobustLock.attach(descriptor: options.descriptor("lock-fd"))
        let outcome = try lock.lock()
        PeerRuntime.report("outcome=\(outcome)")
        PeerRuntime.ready("locked")
        PeerRuntime.parkForever()
    }

    /// `--lock-fd N [--repair 1]`: locks once, reports the outcome, optionally marks the data
    /// repaired, unlocks.
    static func lockOnce(_ options: PeerOptions) throws {
        let lock = try RobustLock.attach(descriptor: options.descriptor("lock-fd"))
        let outcome = try lock.lock()
        PeerRuntime.report("outcome=\(outcome)")
        if options.int("repair", default: 0) == 1 { try lock.markRepaired() }
        try lock.unlock()
    }

    /// `--size BYTES [--fsize-limit BYTES]`: creates a segment, under RLIMIT_FSIZE if given, and
    /// reports `created=SIZE`, or `error=...` (with `syscall=` and `errno=` where they apply).
    static func segmentCreate(_ options: PeerOptions) throws {
        let limit = options.int("fsize-limit", default: -1)
        if limit >= 0 {
            // SIGXFSZ keeps its default action (end the process): the library must answer first.
            PeerRuntime.setLimit(RLIMIT_FSIZE, "RLIMIT_FSIZE", to: limit)
        }
        do {
            let segment = try Segment.create(name: "peer-segment", size: options.int("size"))
            PeerRuntime.report("created=\(segment.size)")
        } catch {
            PeerRuntime.report("error=\(error)")
            switch error {
            case .system(let system):
                PeerRuntime.report("syscall=\(system.syscall)")
                PeerRuntime.report("errno=\(system.errno.rawValue)")
            case .fileSizeLimit:
                PeerRuntime.report("errno=\(EFBIG)")
            default: break
            }
        }
    }

    /// `--socket-fd N --maximum K [--nofile-limit L]`: lowers RLIMIT_NOFILE to L, receives one
    /// message with up to K descriptors, and reports `received=COUNT` or `error=...`.
    static func receiveDescriptors(_ options: PeerOptions) throws {
        let limit = options.int("nofile-limit", default: -1)
        if limit >= 0 {
            PeerRuntime.setLimit(RLIMIT_NOFILE, "RLIMIT_NOFILE", to: limit)
        }
        PeerRuntime.report("open_before=\(openDescriptorCount())")
        do {
            let message = try DescriptorPassing.receive(
                on: options.descriptor("socket-fd"), capacity: 64, maximumDescriptors: options.int("maximum"))
            PeerRuntime.report("received=\(message.descriptors.count)")
        } catch {
            PeerRuntime.report("error=\(error)")
        }
        PeerRuntime.report("open_after=\(openDescriptorCount())")
    }

    /// How many descriptors this process has open (this peer is single-threaded here).
    static func openDescriptorCount() -> Int {
        guard let directory = opendir("/proc/self/fd") else { return -1 }
        defer { closedir(directory) }
        var count = 0
        while readdir(directory) != nil { count += 1 }
        return count
    }

    /// The highest descriptor number open now.
    static func highestDescriptor() -> Int32 {
        guard let directory = opendir("/proc/self/fd") else { return 1024 }
        defer { closedir(directory) }
        var highest: Int32 = 0
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) {
                String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self)
            }
            if let fd = Int32(name) { highest = max(highest, fd) }
        }
        return highest
    }
}
