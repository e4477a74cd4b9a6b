import CShmBench
import Histogram

#if canImport(Glibc)
import Glibc
#endif

/// Runs one case: the shared page and the system's kernel objects are made here, every role is
/// spawned (this executable's `bench-role`, or a program of perf/peers), pinned, and started at
/// once; the results are read from the shared page once the roles have exited.
struct BenchRunner {
    var durationNanoseconds: UInt64
    var cpus: (Int32, Int32)
    var ticksPerNanosecond: Double
    var usesTSC: Bool
    var stallNanoseconds: UInt64 = 0
    var peersDirectory: String
    var counter = 0

    /// How many samples a run can take at most.
    func sampleCapacity(_ item: BenchCase) -> Int {
        let nanoseconds = Int(durationNanoseconds)
        switch item.scenario {
        case .throughput: return 0
        case .rttSpin: return min(nanoseconds / 50, 40_000_000) + 20_000
        case .rttBlock: return nanoseconds / 2_000 + 20_000
        case .fanout: return nanoseconds / 4_000 + 20_000
        case .latency: return Int(Double(item.rate!) * Double(nanoseconds) / 1e9) + 16
        }
    }

    mutating func run(_ item: BenchCase) -> BenchOutcome {
        counter += 1
        let capacity = sampleCapacity(item)
        var mapped: UnsafeMutablePointer<CShmBench_shared>?
        var bytes = 0
        let sharedFD = CShmBench_shared_create(UInt64(capacity), &mapped, &bytes)
        guard sharedFD >= 0, let shared = mapped else {
            return BenchOutcome(failure: "cannot make the shared page: \(String(cString: strerror(-sharedFD)))")
        }
        defer {
            munmap(shared, bytes)
            close(sharedFD)
        }

        var objects = [Int32](repeating: -1, count: Int(CSHMBENCH_MAX_FDS))
        var objectCount: Int32 = 0
        if !item.system.isPeer && item.system != .shmring {
            objectCount = CShmBench_prepare(
                item.system.rawValue, item.scenario.code, Int32(item.consumers), UInt32(item.size), UInt32(item.batch),
                &objects, Int32(objects.count))
            if objectCount < 0 {
                return BenchOutcome(
                    failure: "cannot make its kernel objects: \(String(cString: strerror(-objectCount)))")
            }
        }
        let descriptors = [sharedFD] + objects.prefix(Int(objectCount))
        defer { for fd in objects.prefix(Int(objectCount)) { close(fd) } }

        let roles = item.scenario == .fanout ? 1 + item.consumers : 2
        let name = "shmring-bench-\(getpid())-\(counter)"
        var common = [
            "scenario=\(item.scenario.code)", "consumers=\(item.consumers)", "size=\(item.size)", "batch=\(item.batch)",
            "duration_ns=\(durationNanoseconds)", "rate=\(item.rate ?? 0)", "ticks_per_ns=\(ticksPerNanosecond)",
            "use_tsc=\(usesTSC ? 1 : 0)", "shared_fd=3", "name=\(name)", "bench_pid=\(getpid())",
        ]
        if item.scenario == .latency { common.append("stall_ns=\(stallNanoseconds)") }
        if objectCount > 0 {
            common.append("fds=" + (0..<Int(objectCount)).map { String(4 + $0) }.joined(separator: ","))
        }
        let program = item.system.isPeer ? peersDirectory + "/" + item.system.rawValue : "/proc/self/exe"
        var processes = BenchProcesses()
        defer { processes.end() }
        for role in 0..<roles {
            // The producer (or pinger) on the first CPU, every consumer (or the echo) on the second.
            let cpu = role == 0 ? cpus.0 : cpus.1
            var arguments = item.system.isPeer ? [program] : [program, "bench-role", item.system.rawValue]
            arguments += common + ["role=\(role)", "cpu=\(cpu)"]
            if let error = processes.spawn(program, arguments, descriptors) {
                return BenchOutcome(failure: "cannot start \(program): \(error)")
            }
        }
        // Start once every role is ready; a role that exits first has failed.
        let setUpBy = ContinuousClock.now + .seconds(20)
        while CShmBench_load_acquire(&shared.pointee.ready) < UInt64(roles) {
            if processes.reap() || ContinuousClock.now > setUpBy { break }
            usleep(200)
        }
        guard CShmBench_load_acquire(&shared.pointee.ready) == UInt64(roles) else {
            if let text = failure(shared) { return BenchOutcome(failure: text) }
            if let (role, status) = processes.firstFailure {
                return BenchOutcome(failure: "role \(role) exited with status \(status) before the start")
            }
            return BenchOutcome(failure: "its processes were not ready within 20 s")
        }
        CShmBench_store_release(&shared.pointee.go, 1)
        // Asleep until a role exits (pidfds): nothing of the bench's own wakes the measured CPUs.
        // (A latency run may take twice its duration: a system that falls behind drains its backlog.)
        let limit = durationNanoseconds * (item.scenario == .latency ? 2 : 1)
        let endBy = ContinuousClock.now + .nanoseconds(Int64(limit)) + .seconds(20)
        // Until all have exited, or one failed (the others may wait for it for ever).
        while processes.running && !processes.failed {
            let left = endBy - ContinuousClock.now
            if left <= .zero { return BenchOutcome(failure: failure(shared) ?? "timed out") }
            processes.waitForAnExit(at: left)
            _ = processes.reap()
        }
        if let text = failure(shared) { return BenchOutcome(failure: text) }
        if let (role, status) = processes.firstFailure {
            return BenchOutcome(failure: "role \(role) exited with status \(status)")
        }
        return outcome(item, shared, capacity: capacity)
    }

    /// A role's failure message: up to its first NUL, within the field (a role is not trusted to
    /// have ended it). Acquire: pairs with CShmBench_fail's release of `failed`.
    func failure(_ shared: UnsafeMutablePointer<CShmBench_shared>) -> String? {
        guard CShmBench_load_acquire(&shared.pointee.failed) == 1 else { return nil }
        return withUnsafeBytes(of: shared.pointee.failure) { bytes in
            String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
        }
    }

    func outcome(_ item: BenchCase, _ shared: UnsafeMutablePointer<CShmBench_shared>, capacity: Int) -> BenchOutcome {
        let s = shared.pointee
        var result = BenchOutcome()
        if s.errors > 0 { return BenchOutcome(failure: "\(s.errors) messages out of order or with a wrong echo") }
        let seconds = { (ticks: UInt64) in Double(ticks) / self.ticksPerNanosecond / 1e9 }
        switch item.scenario {
        case .throughput:
            guard s.received == s.sent, s.last_ticks > s.first_ticks else {
                return BenchOutcome(failure: "sent \(s.sent) messages, \(s.received) arrived")
            }
            result.messagesPerSecond = Double(s.received) / seconds(s.last_ticks - s.first_ticks)
        case .fanout:
            // (Counts from the page are not trusted: an overflowing product is a mismatch, not a trap.)
            let (expected, overflow) = s.sent.multipliedReportingOverflow(by: UInt64(item.consumers))
            guard !overflow, s.received == expected, s.last_ticks > s.first_ticks else {
                return BenchOutcome(
                    failure: "sent \(s.sent) messages to \(item.consumers) consumers, \(s.received) arrived")
            }
            result.deliveriesPerSecond = Double(s.received) / seconds(s.last_ticks - s.first_ticks)
            result.sleptShare = min(1, Double(s.switches) / Double(max(1, s.received &+ s.acks)))
        case .latency:
            guard s.received == s.sent else {
                return BenchOutcome(failure: "sent \(s.sent) messages, \(s.received) arrived")
            }
            // The rate achieved: from the first intended send time to the last receipt.
            if s.received > 1, s.last_ticks > s.first_ticks {
                result.messagesPerSecond = Double(s.received - 1) / seconds(s.last_ticks - s.first_ticks)
            }
            result.sleptShare = min(1, Double(s.switches) / Double(max(1, s.received)))
        case .rttSpin, .rttBlock:
            if s.hops > 0 { result.sleptShare = min(1, Double(s.switches) / Double(s.hops)) }
        }
        let count = Int(min(s.sample_count, UInt64(capacity)))
        // rtt-* and fanout stop sampling at the capacity, before their duration ends.
        result.capped = capacity > 0 && count == capacity && item.scenario != .latency
        if count > 0 {
            let highest: UInt64 = 3_600_000_000_000  // an hour: beyond it, a sample is recorded as an hour
            var histogram = Histogram<UInt64>(highestTrackableValue: highest, numberOfSignificantValueDigits: .three)
            let samples = CShmBench_samples(shared)!
            let scale = 1 / ticksPerNanosecond
            for index in 0..<count {
                let nanoseconds = (Double(samples[index]) * scale).rounded()
                _ = histogram.record(nanoseconds < Double(highest) ? UInt64(nanoseconds) : highest)
            }
            result.latencies = histogram
        }
        return result
    }

    static func spawn(_ program: String, _ arguments: [String], _ descriptors: [Int32], _ pid: inout pid_t) -> Int32 {
        let argv = arguments.map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        return descriptors.withUnsafeBufferPointer { fds in
            CShmBench_spawn(program, argv, fds.baseAddress, Int32(fds.count), &pid)
        }
    }
}

/// The roles of one run: spawned with a pidfd each, reaped as they exit; whatever is still
/// running at the end is killed and reaped (only those: a reaped pid may be someone else's).
struct BenchProcesses {
    var pids: [pid_t] = []
    var pidfds: [Int32] = []
    var statuses: [Int32?] = []

    /// Starts one; nil, or why it could not.
    mutating func spawn(_ program: String, _ arguments: [String], _ descriptors: [Int32]) -> String? {
        var pid: pid_t = 0
        let rc = BenchRunner.spawn(program, arguments, descriptors, &pid)
        guard rc == 0 else { return String(cString: strerror(rc)) }
        pids.append(pid)
        pidfds.append(CShmBench_pidfd(pid))
        statuses.append(nil)
        return nil
    }

    var running: Bool { statuses.contains { $0 == nil } }
    var failed: Bool { statuses.contains { $0 != nil && $0 != 0 } }
    /// The first role that exited with a status other than 0 (one still running is not counted).
    var firstFailure: (Int, Int32)? { statuses.firstIndex { ($0 ?? 0) != 0 }.map { ($0, statuses[$0] ?? -1) } }

    /// Sleeps until a running role exits or `timeout` passes (at most a minute).
    func waitForAnExit(at timeout: Duration) {
        let running = pids.indices.filter { statuses[$0] == nil }
        let open = running.map { pidfds[$0] }.filter { $0 >= 0 }
        guard open.count == running.count else {
            usleep(1000)  // no pidfd: look every millisecond
            return
        }
        let milliseconds = Int32(min(timeout.components.seconds * 1000 + 1, 60_000))
        _ = open.withUnsafeBufferPointer { CShmBench_wait_exits($0.baseAddress, Int32($0.count), milliseconds) }
    }

    /// Collects the roles that have exited; true when one has. `blocking`: waits for all.
    mutating func reap(blocking: Bool = false) -> Bool {
        var exited = false
        for (index, pid) in pids.enumerated() where statuses[index] == nil {
            var status: Int32 = 0
            let rc = waitpid(pid, &status, blocking ? 0 : WNOHANG)
            if rc == pid {
                // Exit status, or 128 + the signal that killed it.
                let signal = status & 0x7f
                statuses[index] = signal == 0 ? (status >> 8) & 0xff : 128 + signal
                exited = true
            } else if rc < 0 && errno != EINTR {
                statuses[index] = -1
                exited = true
            }
        }
        return exited
    }

    /// Kills what still runs (after a failure, with 100 ms of grace for the others to finish on
    /// their own), reaps everything and closes the pidfds.
    mutating func end() {
        if running && failed { usleep(100_000) }
        _ = reap()
        for index in pids.indices where statuses[index] == nil { kill(pids[index], SIGKILL) }
        _ = reap(blocking: true)
        for fd in pidfds where fd >= 0 { close(fd) }
        pidfds = []
    }

}
