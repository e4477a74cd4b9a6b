// In-process publish+poll of the ring at several payload sizes, for a gating consumer (in place)
// and a lossy one (copy, then validate), gated on zero allocations per message
// (package-benchmark's malloc counter). Two-process figures are perf/study.py's.
import Benchmark
import ShmRing

#if canImport(Glibc)
import Glibc
#endif

/// A producer and a consumer of one ring in this process, and a payload.
final class RingPair {
    let producer: RingProducer
    let consumer: RingConsumer
    let payload: UnsafeMutableRawBufferPointer

    init(size: Int, policy: ConsumerPolicy = .gating) throws {
        let key = "bench-ring-\(size)-\(policy)-\(getpid())"
        producer = try RingProducer(key: key, configuration: RingConfiguration(capacity: 1 << 22))
        consumer = try RingConsumer(key: key, configuration: .init(policy: policy))
        payload = .allocate(byteCount: size, alignment: 16)
        payload.initializeMemory(as: UInt8.self, repeating: 7)
    }

    deinit { payload.deallocate() }
}

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .mallocCountTotal, .throughput],
        warmupIterations: 1000,
        maxDuration: .seconds(2),
        maxIterations: 2_000_000
    )
    for (size, policy) in [8, 64, 256, 1024, 16384].map({ ($0, ConsumerPolicy.gating) })
        + [64, 1024].map({ ($0, ConsumerPolicy.lossy) })
    {
        Benchmark(
            policy == .gating ? "publish+poll \(size) B" : "publish+poll \(size) B, lossy (copy, validate)",
            configuration: .init(thresholds: [.mallocCountTotal: .init(absolute: [.p100: 0])])
        ) { (benchmark: Benchmark, pair: RingPair) in
            let message = UnsafeRawBufferPointer(pair.payload)
            var sum: UInt64 = 0
            for _ in benchmark.scaledIterations {
                _ = try pair.producer.publish(message)
                _ = try pair.consumer.poll(limit: 1) { bytes, _ in
                    sum &+= UInt64(bytes.unsafeLoad(as: UInt8.self))
                    return .continue
                }
            }
            blackHole(sum)
        } setup: {
            try RingPair(size: size, policy: policy)
        }
    }
}
