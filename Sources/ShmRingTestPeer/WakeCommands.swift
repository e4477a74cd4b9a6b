import CShmAtomics
import CShmTestSupport
import ShmRing
import ShmRingTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// Scenarios of the wake-up path (WakeupTests, docs/wakeup.md).
enum WakeCommands {
    /// `--key K --count N [--timeout-ms T] [--burst B] [--idle spin] [--stall]`: attaches (gating, from the
    /// oldest message), says "attached", and reads N messages, checking each, with
    /// `wait(timeout:)` whenever a poll finds nothing (with `--idle spin`: spinning in
    /// `idle(using: .spin)`, which looks for the producer about once per idle millisecond). Reports the verification, `sleeps=`, `woken=`, `timeouts=`,
    /// `fallback=`, and `ended=done|producerGone`; with B, also `first_latencies_ns=`: for the
    /// first message of each burst of B (sequence a multiple of B), the time from its stamp to
    /// its poll, comma-separated (perf/wake-many.py).
    static func consume(_ options: PeerOptions) throws {
        let consumer = try RingConsumer(key: options.string("key"), configuration: .init(start: .oldest))
        let timeout = Duration.milliseconds(options.int("timeout-ms", default: 1000))
        let count = options.int("count")
        PeerRuntime.ready("attached")
        if options.has("stall") {
            // `--stall`: a gating consumer that never reads (the producer fills the ring and waits
            // for it), until killed.
            while true { pause() }
        }
        var verification = RingCommands.Verification()
        var timeouts = 0
        var ended = "done"
        let burst = UInt64(max(0, options.int("burst", default: 0)))
        let spinning = options.has("idle") && options.string("idle") == "spin"
        var rounds = 0
        var firstLatencies: [UInt64] = []
        while verification.received < count {
            // A spinning consumer's poll may be the first to see the producer go.
            guard
                let got = try RingCommands.pollUnlessGone(
                    consumer, limit: count - verification.received,
                    { bytes, info in
                        verification.check(bytes, info)
                        if burst > 0 && info.sequence % burst == 0,
                            case .valid(_, let stamp) = bytes.withUnsafeBytes({ GeneratedMessage.check($0) })
                        {
                            firstLatencies.append(RingCommands.now() &- stamp)
                        }
                        return .continue
                    })
            else {
                ended = "producerGone"
                break
            }
            if got > 0 {
                rounds = 0
                continue
            }
            if spinning {
                if try consumer.idle(using: .spin, rounds: &rounds) == .producerGone { ended = "producerGone" }
                if ended != "done" { break }
                continue
            }
            switch try consumer.wait(timeout: timeout) {
            case .ready: break
            case .timedOut: timeouts += 1
            case .producerGone: ended = "producerGone"
            }
            if ended != "done" { break }
        }
        let endedAt = RingCommands.now()  // before the reports (each a write(2))
        verification.report()
        PeerRuntime.report("sleeps=\(consumer.sleeps)")
        PeerRuntime.report("woken=\(consumer.wakeUps)")
        PeerRuntime.report("announced=\(consumer.announcedWaits)")
        PeerRuntime.report("timeouts=\(timeouts)")
        PeerRuntime.report("fallback=\(consumer.sleepFallbackReason ?? "none")")
        PeerRuntime.report("ended=\(ended)")
        PeerRuntime.report("ended_at_ns=\(endedAt)")  // CLOCK_MONOTONIC (perf/death-times.py)
        if burst > 0 {
            PeerRuntime.report("first_latencies_ns=\(firstLatencies.map(String.init).joined(separator: ","))")
        }
        consumer.detach()
    }

    /// `--key K --consumers N --rounds R --burst B [--gap-us G] [--capacity C]`: waking many
    /// sleepers. Creates the ring, waits for N consumers, then R times: waits (at most a minute)
    /// until all N are asleep (their slots and the doorbell say so), and publishes B generated messages (stamped), then
    /// waits G µs. Reports `publish_p50_ns=`, `publish_p99_ns=` and `publish_max_ns=`: how long
    /// each round's first publish took, the one that wakes the sleepers (perf/wake-many.py);
    /// `wakes=`, `not_asleep=` (rounds that started without all N asleep), `published=`.
    static func fanOut(_ options: PeerOptions) throws {
        let key = options.string("key")
        let producer = try RingProducer(
            key: key, configuration: RingConfiguration(capacity: options.int("capacity", default: 1 << 20)))
        let consumers = options.int("consumers")
        let (rounds, burst) = (options.int("rounds"), max(1, options.int("burst", default: 1)))
        let gap = UInt32(max(0, options.int("gap-us", default: 0)))
        PeerRuntime.ready("created")
        while producer.activeConsumerCount < consumers { usleep(200) }
        let observer = try RingObserver(key: key)
        var message = [UInt8](repeating: 0, count: 64)
        var publishTimes: [UInt64] = []
        var notAsleep = 0
        var sequence: UInt64 = 0
        for _ in 0..<rounds {
            let deadline = ContinuousClock.now + .seconds(60)
            // Asleep: every consumer says so in its slot and counts itself in the doorbell, one
            // announced the current epoch, and the last wake was passed on. (A consumer woken
            // but not yet run still shows `sleeping`: the doorbell tells.)
            func allAsleep() -> Bool {
                let doorbell = producer.doorbellForTests
                return doorbell.announced && Int(doorbell.sleepers) == consumers && !doorbell.passOnPending
                    && observer.snapshot().consumers.filter(\.sleeping).count == consumers
            }
            while !allAsleep() {
                if ContinuousClock.now > deadline {
                    notAsleep += 1
                    break
                }
                usleep(100)
            }
            for index in 0..<burst {
                let stamp = RingCommands.now()
                message.withUnsafeMutableBytes {
                    GeneratedMessage.write(sequence: sequence, timestamp: stamp, into: $0)
                }
                var spins = 0
                while try producer.publish(message) == .backPressured { producer.idle(using: .block(), rounds: &spins) }
                if index == 0 { publishTimes.append(RingCommands.now() &- stamp) }
                sequence += 1
            }
            if gap > 0 { usleep(gap) }
        }
        let sorted = publishTimes.sorted()
        PeerRuntime.report("published=\(sequence)")
        PeerRuntime.report("wakes=\(producer.wakes)")
        PeerRuntime.report("not_asleep=\(notAsleep)")
        PeerRuntime.report("publish_p50_ns=\(sorted[sorted.count / 2])")
        PeerRuntime.report("publish_p99_ns=\(sorted[sorted.count * 99 / 100])")
        PeerRuntime.report("publish_max_ns=\(sorted.last!)")
        PeerRuntime.report("publish_ns=\(publishTimes.map(String.init).joined(separator: ","))")
        PeerRuntime.ready("published")
        while producer.activeConsumerCount > 0 { usleep(1000) }
    }

    /// `--key K --rounds N --side ping|pong [--size S] [--cpu C] [--gap-us G]`: one side of a round
    /// trip in which both sides block. With G > 0, pong waits G µs before each answer (so that
    /// ping is surely asleep) and stamps it; ping reports the answer's one-way latency, from the
    /// stamp to its return from the wait (`hop_p50_ns=` ...): a sleeping consumer's wake-up. Each creates its own ring (`K-ping` or `K-pong`), attaches to the other's,
    /// and then: ping publishes and waits for the pong, pong waits for the ping and answers.
    /// Reports `rounds=`, `sleeps=` (waits that slept), `woken=`, `rtt_p50_ns=`, `rtt_p99_ns=`
    /// (ping only) and `fallback=`.
    static func pingPong(_ options: PeerOptions) throws {
        let key = options.string("key")
        let rounds = options.int("rounds")
        let ping = options.string("side") == "ping"
        var message = [UInt8](repeating: 7, count: max(8, options.int("size", default: 64)))
        if options.has("cpu") { _ = CShmTestSupport_pin_thread_to_cpu(Int32(options.int("cpu"))) }
        let gap = UInt32(max(0, options.int("gap-us", default: 0)))
        let producer = try RingProducer(key: key + (ping ? "-ping" : "-pong"))
        var found: RingConsumer?
        for _ in 0..<20_000 where found == nil {
            found = try? RingConsumer(key: key + (ping ? "-pong" : "-ping"), configuration: .init(start: .oldest))
            if found == nil { usleep(1000) }
        }
        guard let consumer = found else { PeerRuntime.fail("the other side's ring never appeared") }
        PeerRuntime.ready("attached")
        // Both sides are attached once each has seen the other's consumer arrive.
        while producer.activeConsumerCount == 0 { usleep(1000) }
        var samples = [UInt64](repeating: 0, count: ping ? rounds : 0)
        var timeouts = 0
        // Pong with a gap: how long each stamped publish (with its wake) takes, for the breakdown.
        var publishTimes: [UInt64] = []
        // Ping with a gap: from the answer's stamp to the return from `wait` (before the poll).
        var wakeReturns: [UInt64] = []
        publishTimes.reserveCapacity(ping ? 0 : rounds)
        for round in 0..<rounds {
            let start = RingCommands.now()
            if ping { try producer.publish(message) }
            var got = 0
            var sentAt: UInt64 = 0
            var wokeAt: UInt64 = 0
            while got == 0 {
                got = try consumer.poll(limit: 1) { bytes, _ in
                    sentAt = bytes.unsafeLoadUnaligned(as: UInt64.self)
                    return .continue
                }
                if got == 0 {
                    switch try consumer.wait(timeout: .seconds(5)) {
                    case .ready: wokeAt = RingCommands.now()
                    case .timedOut: timeouts += 1  // a lost wake-up: the test expects none
                    case .producerGone: PeerRuntime.fail("the other side went away at round \(round)")
                    }
                }
            }
            if !ping {
                if gap > 0 {
                    usleep(gap)
                    // Stamped in place (the array is unique: no copy after the stamp).
                    let now = RingCommands.now()
                    message.withUnsafeMutableBytes { $0.storeBytes(of: now, as: UInt64.self) }
                    try producer.publish(message)
                    publishTimes.append(RingCommands.now() - now)
                } else {
                    try producer.publish(message)
                }
            }
            if ping { samples[round] = RingCommands.now() - (gap > 0 ? sentAt : start) }
            if ping && gap > 0 { wakeReturns.append(wokeAt &- sentAt) }
        }
        PeerRuntime.report("rounds=\(rounds)")
        PeerRuntime.report("timeouts=\(timeouts)")
        PeerRuntime.report("sleeps=\(consumer.sleeps)")
        PeerRuntime.report("woken=\(consumer.wakeUps)")
        PeerRuntime.report("announced=\(consumer.announcedWaits)")
        PeerRuntime.report("wakes=\(producer.wakes)")
        PeerRuntime.report("fallback=\(consumer.sleepFallbackReason ?? "none")")
        if ping {
            // The first tenth (at most 1 000 rounds) is warm-up.
            let measured = Array(samples[min(1000, rounds / 10)...]).sorted()
            let name = gap > 0 ? "hop" : "rtt"
            PeerRuntime.report("\(name)_p50_ns=\(measured[measured.count / 2])")
            PeerRuntime.report("\(name)_p99_ns=\(measured[measured.count * 99 / 100])")
            PeerRuntime.report("\(name)_p999_ns=\(measured[measured.count * 999 / 1000])")
        }
        if !wakeReturns.isEmpty {
            let sorted = wakeReturns.sorted()
            PeerRuntime.report("wait_return_p50_ns=\(sorted[sorted.count / 2])")
        }
        if !publishTimes.isEmpty {
            let sorted = publishTimes.sorted()
            PeerRuntime.report("publish_p50_ns=\(sorted[sorted.count / 2])")
            PeerRuntime.report("publish_p99_ns=\(sorted[sorted.count * 99 / 100])")
        }
        // The last answer must be read before this side's ring goes.
        if !ping { while producer.activeConsumerCount > 0 { usleep(1000) } }
        consumer.detach()
    }

    /// `--key K`: a hostile consumer. Attaches lossy, says "attached", and writes the doorbell
    /// for ever: random words, and the value that asks for a wake of the current epoch.
    static func scribbleDoorbell(_ options: PeerOptions) throws {
        let consumer = try RingConsumer(key: options.string("key"), configuration: .init(policy: .lossy))
        PeerRuntime.ready("attached")
        var random = SplitMix64(seed: UInt64(getpid()))
        let doorbell = consumer.doorbellForTests
        while true {
            let value = UInt32(truncatingIfNeeded: random.next())
            // Half of the time a random word, half of the time a request to wake the current epoch
            // (the producer then issues a FUTEX_WAKE on its next publish).
            CShmAtomics_u32_store_relaxed(doorbell, value & 1 == 0 ? value : consumer.dataEpochForTests &+ 1)
        }
    }

    /// `--key K --count N --idle spin|yield|backoff|block|async`: the idle-strategy table
    /// (perf/idle-table.py). Attaches (gating), reads N generated messages (from `shmring pub
    /// --rate`), idling as told between them (`async`: through `RingConsumer.messages()`), and
    /// reports the one-way latency from each message's stamp to its poll (`latency_p50_ns=`, `latency_p99_ns=`, `latency_p999_ns=`, after the
    /// first twentieth, a warm-up; `slowest=` lists the five slowest as index:ns) and the CPU
    /// time this process used from the first message to the last (`cpu_ns=`, user + system,
    /// getrusage), with `elapsed_ns=`.
    static func idleConsume(_ options: PeerOptions) throws {
        let consumer = try RingConsumer(key: options.string("key"))
        let count = options.int("count")
        let idle = options.string("idle")
        let strategy: IdleStrategy =
            switch idle {
            case "spin": .spin
            case "yield": .yield
            case "backoff": .backoff
            case "block", "async": .block()
            default: PeerRuntime.fail("--idle spin|yield|backoff|block|async")
            }
        PeerRuntime.ready("attached")
        var latencies = [UInt64]()
        latencies.reserveCapacity(count)
        var (cpuStart, started): (UInt64, UInt64) = (0, 0)
        var rounds = 0
        if idle == "async" {
            // `for try await` over `messages()`: the task polls, a thread of the iterator's own
            // waits. This thread only waits for the task to finish.
            let box = AsyncRun(consumer: consumer, count: count)
            Task { await box.run() }
            while !box.isDone { usleep(1000) }
            (latencies, cpuStart, started) = (box.latencies, box.cpuStart, box.started)
        } else {
            while latencies.count < count {
                guard
                    let got = try RingCommands.pollUnlessGone(
                        consumer, limit: count - latencies.count,
                        { bytes, _ in
                            let now = RingCommands.now()
                            if case .valid(_, let stamp) = bytes.withUnsafeBytes({ GeneratedMessage.check($0) }) {
                                latencies.append(now &- stamp)
                            }
                            return .continue
                        })
                else { break }
                if got > 0 {
                    rounds = 0
                    if started == 0 { (cpuStart, started) = (cpuNanoseconds(), RingCommands.now()) }
                    continue
                }
                if try consumer.idle(using: strategy, rounds: &rounds) == .producerGone { break }
            }
        }
        let (cpu, elapsed) = (cpuNanoseconds() - cpuStart, RingCommands.now() - started)
        // Where the slowest ones were (diagnostics: a stall shows as a run of neighbours; the
        // first few messages of a run that sleeps wait 1.5-3 ms, hence the warm-up below).
        let slowest = latencies.indices.sorted { latencies[$0] > latencies[$1] }.prefix(5)
        PeerRuntime.report("slowest=\(slowest.map { "\($0):\(latencies[$0])" }.joined(separator: ","))")
        // The first twentieth is warm-up.
        latencies = latencies[(latencies.count / 20)...].sorted()
        PeerRuntime.report("messages=\(latencies.count)")
        PeerRuntime.report("latency_p50_ns=\(latencies[latencies.count / 2])")
        PeerRuntime.report("latency_p99_ns=\(latencies[latencies.count * 99 / 100])")
        PeerRuntime.report("latency_p999_ns=\(latencies[latencies.count * 999 / 1000])")
        PeerRuntime.report("cpu_ns=\(cpu)")
        PeerRuntime.report("elapsed_ns=\(elapsed)")
        PeerRuntime.report("sleeps=\(consumer.sleeps)")
        consumer.detach()
    }

    /// `--key K`: the producer's side of the eviction time (perf/death-times.py). Creates a
    /// 4 KiB ring, waits for one consumer, publishes until the ring is full (that consumer never
    /// reads: `ring-wait-consume --stall`), says "full", then publishes once more, blocking, and
    /// reports `resumed_at_ns=` (CLOCK_MONOTONIC) when that publish went through: after the
    /// consumer was killed and its slot reclaimed.
    static func evictProduce(_ options: PeerOptions) throws {
        let producer = try RingProducer(key: options.string("key"), configuration: RingConfiguration(capacity: 4096))
        PeerRuntime.ready("created")
        while producer.activeConsumerCount < 1 { usleep(200) }
        let message = [UInt8](repeating: 7, count: 64)
        while try producer.publish(message) == .published {}
        PeerRuntime.ready("full")
        var rounds = 0
        while try producer.publish(message) == .backPressured {
            producer.idle(using: .block(timeout: .seconds(60)), rounds: &rounds)
        }
        PeerRuntime.report("resumed_at_ns=\(RingCommands.now())")
    }

    /// User + system CPU time of this process so far.
    static func cpuNanoseconds() -> UInt64 {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        func nanoseconds(_ time: timeval) -> UInt64 {
            UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_usec) * 1000
        }
        return nanoseconds(usage.ru_utime) + nanoseconds(usage.ru_stime)
    }
}

/// The `async` row of ring-idle-consume: the consumer read through its `AsyncSequence` in a task
/// while the main thread waits. `@unchecked Sendable`: the task alone uses the consumer and the
/// arrays until it sets `done` (an atomic word, read by the main thread).
final class AsyncRun: @unchecked Sendable {
    let consumer: RingConsumer
    let count: Int
    var latencies: [UInt64] = []
    var cpuStart: UInt64 = 0
    var started: UInt64 = 0
    private let done = UnsafeMutablePointer<UInt32>.allocate(capacity: 1)

    init(consumer: RingConsumer, count: Int) {
        self.consumer = consumer
        self.count = count
        done.initialize(to: 0)
    }

    var isDone: Bool { CShmAtomics_u32_load_acquire(done) == 1 }

    func run() async {
        latencies.reserveCapacity(count)
        do {
            for try await message in consumer.messages() {
                let now = RingCommands.now()
                if case .valid(_, let stamp) = message.bytes.withUnsafeBytes({ GeneratedMessage.check($0) }) {
                    latencies.append(now &- stamp)
                }
                if started == 0 { (cpuStart, started) = (WakeCommands.cpuNanoseconds(), RingCommands.now()) }
                if latencies.count == count { break }
            }
        } catch {
            PeerRuntime.fail("\(error)")
        }
        // Release: the arrays before the flag. Partner: the acquire load in `isDone`.
        CShmAtomics_u32_store_release(done, 1)
    }
}
