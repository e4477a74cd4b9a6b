import CShmAtomics
import CShmLinux
import CShmTestSupport
import ShmRing

#if canImport(Glibc)
import Glibc
#endif

/// Two-process benchmarks of the ring, shaped like perf/c/harness.h so that perf/study.py can
/// compare them in one run: the same capacity (1 MiB unless `--capacity`), payload, pinning and
/// timing.
///
/// `ring-bench --mode throughput|rtt --count N --size S --cpu-a A --cpu-b B [--alignment AL]
/// [--batch BA] [--capacity BYTES] [--idle-pauses N]`: this process is side A (producer of the data, or the pinger); it spawns itself as
/// side B (`ring-bench-child`).
enum RingBench {
    static func run(_ options: PeerOptions) throws {
        let mode = options.string("mode")
        let count = options.int("count")
        let size = options.int("size")
        let key = "bench-\(getpid())"
        // Round trips before the measured ones (as perf/c/harness.h): caches, TLB and branch
        // predictors warm, both rings' pages touched.
        let warm = mode == "rtt" ? 10_000 : 0
        var configuration = RingConfiguration(capacity: options.int("capacity", default: 1 << 20))
        configuration.alignment = options.int("alignment", default: 16)
        let producer = try RingProducer(key: key, configuration: configuration)
        let child = try spawnChild([
            "ring-bench-child", "--mode", mode, "--key", key, "--count", "\(count + warm)", "--size", "\(size)",
            "--cpu",
            options.string("cpu-b"), "--alignment", "\(configuration.alignment)", "--capacity",
            "\(configuration.capacity)", "--idle-pauses", "\(options.int("idle-pauses", default: 1))",
        ])
        _ = CShmTestSupport_pin_thread_to_cpu(Int32(options.int("cpu-a")))
        while producer.activeConsumerCount < 1 { usleep(100) }
        let payload = UnsafeMutableRawBufferPointer.allocate(byteCount: max(size, 8), alignment: 16)
        defer { payload.deallocate() }
        payload.initializeMemory(as: UInt8.self, repeating: 7)
        let message = UnsafeRawBufferPointer(rebasing: payload[0..<size])
        if mode == "throughput" {
            let batch = options.int("batch", default: 1)
            var index = 0
            while index < count {
                if batch > 1 {
                    var done = 0
                    try producer.batch { producer in
                        while done < batch && index + done < count {
                            payload.storeBytes(of: UInt64(index + done), as: UInt64.self)
                            guard try producer.publish(message) == .published else { break }
                            done += 1
                        }
                    }
                    if done == 0 { CShmAtomics_pause() }
                    index += done
                } else {
                    payload.storeBytes(of: UInt64(index), as: UInt64.self)
                    while try producer.publish(message) == .backPressured { CShmAtomics_pause() }
                    index += 1
                }
            }
        } else {
            var consumer: RingConsumer?
            while consumer == nil { consumer = try? RingConsumer(key: key + "-pong") }
            let samples = UnsafeMutablePointer<UInt64>.allocate(capacity: count)
            defer { samples.deallocate() }
            var sink: UInt64 = 0
            for round in 0..<(warm + count) {
                let start = RingCommands.now()
                while try producer.publish(message) == .backPressured { CShmAtomics_pause() }
                while try consumer!.poll(
                    limit: 1,
                    { bytes, _ in
                        sink &+= UInt64(bytes.unsafeLoad(as: UInt8.self))
                        return .continue
                    }) == 0
                { CShmAtomics_pause() }
                if round >= warm { samples[round - warm] = RingCommands.now() - start }
            }
            var sorted = UnsafeMutableBufferPointer(start: samples, count: count)
            sorted.sort()
            print(
                "shmring rtt_p50_ns=\(sorted[count / 2]) rtt_p99_ns=\(sorted[count * 99 / 100]) "
                    + "rtt_p999_ns=\(sorted[count * 999 / 1000]) samples=\(count) sink=\(sink)")
        }
        var status: Int32 = 0
        while waitpid(child, &status, 0) < 0 && errno == EINTR {}
    }

    /// Side B.
    static func child(_ options: PeerOptions) throws {
        _ = CShmTestSupport_pin_thread_to_cpu(Int32(options.int("cpu")))
        let key = options.string("key")
        let count = options.int("count")
        let size = options.int("size")
        let consumer = try RingConsumer(key: key)
        var received = 0
        var sum: UInt64 = 0
        if options.string("mode") == "throughput" {
            // How many pauses after a poll that found nothing (perf/c/harness.h's IDLE_PAUSES).
            let idlePauses = max(0, options.int("idle-pauses", default: 1))
            var start: UInt64 = 0
            while received < count {
                let got = try consumer.poll { bytes, _ in
                    sum &+= bytes.unsafeLoad(as: UInt64.self)
                    return .continue
                }
                if got > 0 && received == 0 { start = RingCommands.now() }
                received += got
                if got == 0 { for _ in 0..<idlePauses { CShmAtomics_pause() } }
            }
            let seconds = Double(RingCommands.now() - start) / 1e9
            print(
                "shmring size=\(size) messages=\(count) msgs_per_s=\(Int(Double(count) / seconds)) "
                    + "bytes_per_s=\(Int(Double(count * size) / seconds)) checksum=\(sum)")
        } else {
            var configuration = RingConfiguration(capacity: options.int("capacity", default: 1 << 20))
            configuration.alignment = options.int("alignment", default: 16)
            let pong = try RingProducer(key: key + "-pong", configuration: configuration)
            let payload = [UInt8](repeating: 7, count: size)
            try payload.withUnsafeBytes { message in
                while received < count {
                    let got = try consumer.poll(limit: 1) { _, _ in .continue }
                    if got == 0 {
                        CShmAtomics_pause()
                        continue
                    }
                    received += 1
                    while try pong.publish(message) == .backPressured { CShmAtomics_pause() }
                }
            }
            // Let the pinger take the last pong before this producer goes.
            while pong.activeConsumerCount > 0 && received == count { usleep(100) }
        }
    }

    static func spawnChild(_ arguments: [String]) throws -> pid_t {
        var pid: pid_t = 0
        let argv = (["shmring-test-peer"] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        let rc = posix_spawn(&pid, "/proc/self/exe", nil, nil, argv, environ)
        guard rc == 0 else { PeerRuntime.fail("posix_spawn: \(rc)") }
        return pid
    }
}
