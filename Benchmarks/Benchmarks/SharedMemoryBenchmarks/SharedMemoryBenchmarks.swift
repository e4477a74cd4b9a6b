// Benchmarks of the SharedMemory layer: the lock on its fast path (gated on zero allocations),
// data access, and the cold paths (create, attach) for reference.
import Benchmark
import ShmRing

#if canImport(Glibc)
import Glibc
#endif

/// A key unique to this run.
func benchmarkKey(_ name: String) -> String { "bench-\(name)-\(getpid())" }

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .mallocCountTotal, .throughput],
        warmupIterations: 10,
        maxDuration: .seconds(2),
        maxIterations: 1_000_000
    )

    // The uncontended lock: a process-shared robust mutex, no syscall when free. Must not allocate.
    Benchmark(
        "lock+unlock, uncontended",
        configuration: .init(thresholds: [.mallocCountTotal: .init(absolute: [.p100: 0])])
    ) { (benchmark: Benchmark, memory: SharedMemory) in
        for _ in benchmark.scaledIterations {
            _ = try memory.lock()
            try memory.unlock()
        }
    } setup: {
        let memory = SharedMemory(key: benchmarkKey("lock"))
        try memory.create(size: 64)
        return memory
    }

    // Reading through the closure API: bounds come from the segment, not a copy. Must not allocate.
    Benchmark(
        "withUnsafeBytes load",
        configuration: .init(thresholds: [.mallocCountTotal: .init(absolute: [.p100: 0])])
    ) { (benchmark: Benchmark, memory: SharedMemory) in
        var sum: UInt64 = 0
        for _ in benchmark.scaledIterations {
            sum &+= try memory.withUnsafeBytes { $0.load(as: UInt64.self) }
        }
        blackHole(sum)
    } setup: {
        let memory = SharedMemory(key: benchmarkKey("read"))
        try memory.create(size: 64)
        return memory
    }

    // The cold path, for reference: memfd, fallocate, seals, mmap, the lock's memfd, the server
    // thread; and detach (stop, join, unmap, close).
    Benchmark("create+detach 64 KiB", configuration: .init(maxIterations: 2_000)) { benchmark in
        let key = benchmarkKey("create")
        for _ in benchmark.scaledIterations {
            let memory = SharedMemory(key: key)
            try memory.create(size: 65536)
            memory.detach()
        }
    }

    // An attach: connect, credentials both ways, request, reply with two descriptors, two mmaps.
    Benchmark("attach+detach", configuration: .init(maxIterations: 5_000)) { (benchmark: Benchmark, creator: SharedMemory) in
        for _ in benchmark.scaledIterations {
            let memory = SharedMemory(key: creator.key)
            try memory.attach(mode: .readOnly)
            memory.detach()
        }
    } setup: {
        let creator = SharedMemory(key: benchmarkKey("attach"))
        try creator.create(size: 65536)
        return creator
    }
}
