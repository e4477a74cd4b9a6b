import CShmLinux
import CShmTestSupport
import ShmRing

#if canImport(Glibc)
import Glibc
#endif

/// The hot path under the microscope: publish and poll in one loop, in one process.
///
/// `shmring_hot_publish_poll` has a fixed symbol name so that a test can disassemble it (and what
/// it calls) and prove there is no retain, release, exclusivity check or allocation in it; and the
/// `ring-hot-loop` command runs it under a seccomp filter that kills the process on any system
/// call (docs/ring.md, "The hot path").
enum HotPath {
    /// `--messages N --size S [--policy gating|lossy] [--seccomp 1] [--syscall-in-loop 1]`: a
    /// gating consumer reads in place; a lossy one copies, then validates. Reports the policy the
    /// consumer has, how many messages it delivered and the sum of their first bytes (1 each).
    static func run(_ options: PeerOptions) throws {
        let messages = options.int("messages")
        let size = options.int("size")
        let key = "hot-\(getpid())"
        let policy: ConsumerPolicy
        switch options.has("policy") ? options.string("policy") : "gating" {
        case "gating": policy = .gating
        case "lossy": policy = .lossy
        case let other: PeerRuntime.fail("--policy \(other): gating or lossy")
        }
        let producer = try RingProducer(key: key, configuration: RingConfiguration(capacity: 1 << 20))
        let consumer = try RingConsumer(key: key, configuration: .init(policy: policy))
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 16)
        defer { buffer.deallocate() }
        // From 1: a checksum of first bytes that a loop reading nothing cannot produce.
        for index in 0..<size { buffer[index] = UInt8(truncatingIfNeeded: index &+ 1) }
        // Warm-up: first-touch of code and data, lazy runtime work, all before the filter.
        for _ in 0..<10_000 {
            _ = try producer.publish(UnsafeRawBufferPointer(buffer))
            _ = try consumer.poll { _, _ in .continue }
        }
        PeerRuntime.report("policy=\(consumer.policy == .lossy ? "lossy" : "gating")")
        if options.int("seccomp", default: 0) == 1 {
            guard CShmTestSupport_seccomp_allow_only_exit_and_stdout() == 0 else {
                PeerRuntime.fail("seccomp: errno \(errno)")
            }
        }
        let (delivered, checksum) = shmringHotPublishPoll(
            producer, consumer, UnsafeRawBufferPointer(buffer), messages,
            options.int("syscall-in-loop", default: 0) == 1)
        // Only write(1, ...) and exit_group are allowed from here on. The checksum is printed, so
        // the byte the handler reads from every message cannot be optimized away.
        PeerRuntime.report("delivered=\(delivered)")
        PeerRuntime.report("checksum=\(checksum)")
        _exit(delivered == UInt64(messages) ? 0 : 1)
    }
}

/// The measured loop (callgrind collects inside this symbol only; one caller, so that LLVM does not
/// merge it with another function under a thunk).
@inline(never)
@_silgen_name("shmring_hot_publish_poll")
func shmringHotPublishPoll(
    _ producer: RingProducer, _ consumer: RingConsumer, _ message: UnsafeRawBufferPointer, _ count: Int,
    _ syscallInLoop: Bool
) -> (delivered: UInt64, checksum: UInt8) {
    hotLoop(producer, consumer, message, count, syscallInLoop)
}

/// Publishes `count` copies of `message` and polls each right after; returns how many were
/// delivered and the sum of the first byte of each (which the caller prints, so that the reads
/// are not optimized away).
@inline(__always)
func hotLoop(
    _ producer: RingProducer, _ consumer: RingConsumer, _ message: UnsafeRawBufferPointer, _ count: Int,
    _ syscallInLoop: Bool
) -> (delivered: UInt64, checksum: UInt8) {
    var delivered: UInt64 = 0
    var checksum: UInt8 = 0
    for _ in 0..<count {
        guard (try? producer.publish(message)) == .published else { break }
        let got =
            (try? consumer.poll(limit: 1) { bytes, _ in
                checksum &+= bytes.unsafeLoad(fromByteOffset: 0, as: UInt8.self)
                return .continue
            }) ?? 0
        delivered &+= UInt64(got)
        if syscallInLoop { _ = getppid() }  // the check's own check: this must be caught
    }
    return (delivered, checksum)
}
