import CShmAtomics
import CShmBench
import ShmRing

#if canImport(Glibc)
import Glibc
#endif

/// ShmRing's roles in `shmring bench`: the steps of the C driver (Sources/CShmBench/driver.h,
/// which every other system runs), with ShmRing's API as a user would call it. A 1 MiB ring
/// (alignment 16, as c-twin); messages are copied in with `publish`, and `poll`'s handler copies
/// each out, as the C consumers do. Consumers busy-spin in `throughput` and `rtt-spin`, sleep in
/// `wait` in `rtt-block` and `fanout`, and idle with `IdleStrategy.block()` in `latency`.
struct ShmRingRoles {
    let p: CShmBench_params
    let shared: UnsafeMutablePointer<CShmBench_shared>
    let samples: UnsafeMutablePointer<UInt64>
    let capacity: Int
    let tsc: Int32
    let message: UnsafeMutableRawBufferPointer

    static let stop: UInt64 = 1 << 62
    static let probe: UInt64 = 1 << 61

    init(_ p: CShmBench_params) {
        self.p = p
        shared = p.shared
        samples = CShmBench_samples(p.shared)!
        capacity = Int(p.shared.pointee.sample_capacity)
        tsc = p.use_tsc
        message = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(CSHMBENCH_MAX_SIZE), alignment: 64)
        message.initializeMemory(as: UInt8.self, repeating: 7)
    }

    var size: Int { Int(p.size) }
    /// Consumers that sleep in `wait` rather than spin.
    var sleeps: Bool { p.scenario != Int32(CSHMBENCH_THROUGHPUT) && p.scenario != Int32(CSHMBENCH_RTT_SPIN) }
    var name: String { withUnsafeBytes(of: p.name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) } }

    func fail(_ text: String) -> Never {
        text.withCString { CShmBench_fail_text(shared, $0) }
        exit(1)
    }

    func ticks() -> UInt64 { CShmBench_ticks(tsc) }

    func deadline(after start: UInt64, nanoseconds: UInt64) -> UInt64 {
        start &+ UInt64(Double(nanoseconds) * p.ticks_per_ns)
    }

    /// Attaches to the ring `key`, retrying for up to 10 s while its producer is not there yet.
    func attach(_ key: String) -> RingConsumer {
        for _ in 0..<10_000 {
            do {
                return try RingConsumer(key: key, configuration: .init(start: .oldest))
            } catch {
                guard error.code == .notFound else { fail("shmring: attach to \(key): \(error)") }
            }
            usleep(1000)
        }
        fail("shmring: the ring \(key) never appeared")
    }

    func makeProducer(_ key: String) -> RingProducer {
        var configuration = RingConfiguration(capacity: 1 << 20)
        configuration.alignment = 16
        do {
            return try RingProducer(key: key, configuration: configuration)
        } catch {
            fail("shmring: create \(key): \(error)")
        }
    }

    func waitForConsumers(_ producer: RingProducer, _ count: Int) {
        guard producer.waitForConsumers(count, timeout: .seconds(10)) else {
            fail("shmring: \(count) consumer(s) did not attach within 10 s")
        }
    }

    func send(_ producer: RingProducer) {
        do {
            let bytes = UnsafeRawBufferPointer(rebasing: message[0..<size])
            while try producer.publish(bytes) == .backPressured { CShmAtomics_pause() }
        } catch {
            fail("shmring: publish: \(error)")
        }
    }

    /// Waits for one message and copies it to `message` (spinning or asleep).
    func receive(_ consumer: RingConsumer) {
        let size = self.size
        let message = self.message
        while true {
            let got: Int
            do {
                got = try consumer.poll(limit: 1) { bytes, _ in
                    bytes.withUnsafeBytes { message.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[0..<size])) }
                    return .continue
                }
            } catch {
                fail("shmring: poll: \(error)")
            }
            if got == 1 { return }
            var rounds = 0
            idle(consumer, &rounds)
        }
    }

    /// The documented sleeping consumer: spin for about one wake-up's cost, then block.
    static let block = IdleStrategy.block(timeout: .seconds(10))

    /// What a consumer does when a poll found nothing: spin (throughput, rtt-spin); sleep at once
    /// in `wait` (rtt-block and fanout: consumers that really sleep, as the kernel's primitives'
    /// do; in fanout they also share one CPU, where spinning would only delay the others);
    /// `idle(using: .block())` in latency (what a user's sleeping consumer does by default).
    func idle(_ consumer: RingConsumer, _ rounds: inout Int) {
        guard sleeps else { return CShmAtomics_pause() }
        do {
            let result =
                p.scenario == Int32(CSHMBENCH_LATENCY)
                ? try consumer.idle(using: Self.block, rounds: &rounds) : try consumer.wait(timeout: .seconds(10))
            if result == .producerGone { fail("shmring: the producer went away") }
        } catch {
            fail("shmring: wait: \(error)")
        }
    }

    func word(_ index: Int) -> UInt64 { message.loadUnaligned(fromByteOffset: 8 * index, as: UInt64.self) }
    func setWord(_ index: Int, _ value: UInt64) {
        message.storeBytes(of: value, toByteOffset: 8 * index, as: UInt64.self)
    }

    func run() -> Int32 {
        let key = name
        let rtt = withUnsafePointer(to: p) { CShmBench_round_trip($0) } != 0
        // Set up: the producer of each direction creates its ring, then attaches to the other's.
        var producer: RingProducer?
        var consumer: RingConsumer?
        if rtt {
            producer = makeProducer(key + (p.role == 0 ? "-a" : "-b"))
            consumer = attach(key + (p.role == 0 ? "-b" : "-a"))
            waitForConsumers(producer!, 1)
        } else if p.role == 0 {
            producer = makeProducer(key)
            waitForConsumers(producer!, Int(p.consumers))
        } else {
            consumer = attach(key)
        }
        if withUnsafePointer(to: p, { CShmBench_samples_here($0) }) != 0 { CShmBench_prefault(shared) }
        // The block strategy's spin budget is calibrated at its first use: here, not in a run.
        if sleeps { _ = IdleStrategy.calibratedSpins }
        withUnsafePointer(to: p) { CShmBench_ready($0) }
        if p.role != 0 {
            if rtt { echo(consumer!, producer!) } else { consume(consumer!) }
        } else {
            switch Int(p.scenario) {
            case Int(CSHMBENCH_THROUGHPUT): throughput(producer!)
            case Int(CSHMBENCH_RTT_SPIN), Int(CSHMBENCH_RTT_BLOCK): ping(producer!, consumer!)
            case Int(CSHMBENCH_LATENCY): paced(producer!)
            case Int(CSHMBENCH_FANOUT): fanout(producer!)
            default: fail("unknown scenario \(p.scenario)")
            }
            setWord(0, Self.stop)
            send(producer!)
            // The consumers read the stop mark from the ring, which outlives this process.
        }
        return 0
    }

    /// The echoing side of a round trip.
    func echo(_ consumer: RingConsumer, _ producer: RingProducer) {
        let switches = CShmBench_voluntary_switches()
        while true {
            receive(consumer)
            if word(0) == Self.stop { break }
            send(producer)
        }
        CShmBench_add(&shared.pointee.switches, CShmBench_voluntary_switches() - switches)
    }

    /// A consumer of throughput, latency or fanout: copies each message out (as the C consumers
    /// do), checks the order, acknowledges probes, and (latency) samples each message's delay
    /// from its intended send time.
    func consume(_ consumer: RingConsumer) {
        let latency = p.scenario == Int32(CSHMBENCH_LATENCY)
        let tsc = self.tsc
        let samples = self.samples
        let capacity = self.capacity
        let shared = self.shared
        let message = self.message
        let size = self.size
        var expected: UInt64 = 1
        var count = 0
        var errors: UInt64 = 0
        var first: UInt64 = 0
        var lastReceived: UInt64 = 0
        var stopped = false
        var rounds = 0
        let switches = CShmBench_voluntary_switches()
        while !stopped {
            let got: Int
            do {
                got = try consumer.poll { bytes, _ in
                    bytes.withUnsafeBytes { message.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[0..<size])) }
                    let word = message.loadUnaligned(as: UInt64.self)
                    if word == Self.stop {
                        stopped = true
                        return .stop
                    }
                    if word & Self.probe != 0 {
                        CShmBench_add(&shared.pointee.acks, 1)
                        return .continue
                    }
                    if word != expected { errors += 1 }
                    expected = word &+ 1
                    if latency {
                        // From the intended send time (0 if the TSCs of the two CPUs disagree).
                        let now = CShmBench_ticks(tsc)
                        let intended = message.loadUnaligned(fromByteOffset: 8, as: UInt64.self)
                        if count == 0 { first = intended }
                        if count < capacity { samples[count] = now > intended ? now - intended : 0 }
                        lastReceived = now
                    } else if count == 0 {
                        first = CShmBench_ticks(tsc)
                    }
                    count += 1
                    return .continue
                }
            } catch {
                fail("shmring: poll: \(error)")
            }
            if got == 0 { idle(consumer, &rounds) } else { rounds = 0 }
        }
        let last = ticks()
        CShmBench_add(&shared.pointee.switches, CShmBench_voluntary_switches() - switches)
        CShmBench_add(&shared.pointee.received, UInt64(count))
        // As driver.h: throughput from the first message to the stop mark; latency from the first
        // intended send time to the last receipt.
        if p.scenario == Int32(CSHMBENCH_THROUGHPUT) || latency {
            shared.pointee.first_ticks = first
            shared.pointee.last_ticks = latency ? lastReceived : last
        }
        if latency { shared.pointee.sample_count = UInt64(min(count, capacity)) }
        if errors > 0 { CShmBench_add(&shared.pointee.errors, errors) }
    }

    func throughput(_ producer: RingProducer) {
        let batch = Int(p.batch)
        let end = deadline(after: ticks(), nanoseconds: p.duration_ns)
        let checkEvery = batch >= 256 ? 1 : 256 / batch
        var sequence: UInt64 = 1
        var countdown = checkEvery  // the clock is read every 256 messages or so, without a division
        let bytes = UnsafeRawBufferPointer(rebasing: message[0..<size])
        let message = self.message
        do {
            while true {
                if batch == 1 {
                    message.storeBytes(of: sequence, as: UInt64.self)
                    while try producer.publish(bytes) == .backPressured { CShmAtomics_pause() }
                    sequence += 1
                } else {
                    var done = 0
                    try producer.batch { producer in
                        while done < batch {
                            message.storeBytes(of: sequence, as: UInt64.self)
                            guard try producer.publish(bytes) == .published else { break }
                            sequence += 1
                            done += 1
                        }
                    }
                    if done < batch { CShmAtomics_pause() }
                }
                countdown -= 1
                if countdown == 0 {
                    if ticks() >= end { break }
                    countdown = checkEvery
                }
            }
        } catch {
            fail("shmring: publish: \(error)")
        }
        shared.pointee.sent = sequence - 1
    }

    func ping(_ producer: RingProducer, _ consumer: RingConsumer) {
        let switches = CShmBench_voluntary_switches()
        let start = ticks()
        let end = deadline(after: start, nanoseconds: p.duration_ns)
        let warmUntil = deadline(after: start, nanoseconds: p.duration_ns / 5)
        var sequence: UInt64 = 1
        var taken = 0
        var now = start
        while true {
            let begin = now
            setWord(0, sequence)
            send(producer)
            receive(consumer)
            now = ticks()
            if word(0) != sequence { CShmBench_add(&shared.pointee.errors, 1) }
            sequence += 1
            if sequence > 10_000 || now >= warmUntil {
                if taken < capacity {
                    samples[taken] = now &- begin
                    taken += 1
                }
                if now >= end || taken == capacity { break }
            }
            now = ticks()
        }
        shared.pointee.sample_count = UInt64(taken)
        shared.pointee.hops = 2 * (sequence - 1)
        CShmBench_add(&shared.pointee.switches, CShmBench_voluntary_switches() - switches)
    }

    func paced(_ producer: RingProducer) {
        let count = UInt64(Double(p.rate) * Double(p.duration_ns) / 1e9)
        let interval = p.ticks_per_ns * 1e9 / Double(p.rate)
        let first = ticks() &+ UInt64(1_000_000 * p.ticks_per_ns)  // 1 ms on, as driver.h
        for index in 0..<count {
            let intended = first &+ UInt64(Double(index) * interval)
            while ticks() < intended { CShmAtomics_pause() }
            if p.stall_ns > 0 && index == count / 2 { CShmBench_sleep_ns(p.stall_ns) }
            setWord(0, index + 1)
            setWord(1, intended)
            send(producer)
        }
        shared.pointee.sent = count
    }

    func fanout(_ producer: RingProducer) {
        let consumers = UInt64(p.consumers)
        let start = ticks()
        let half = deadline(after: start, nanoseconds: p.duration_ns / 2)
        let end = deadline(after: start, nanoseconds: p.duration_ns)
        shared.pointee.first_ticks = start
        var sequence: UInt64 = 1
        var round = 0
        while true {
            setWord(0, sequence)
            sequence += 1
            send(producer)
            round += 1
            if round % 256 == 0 && ticks() >= half { break }
        }
        shared.pointee.sent = sequence - 1
        var probes: UInt64 = 0
        var taken = 0
        while true {
            let begin = ticks()
            setWord(0, Self.probe | sequence)
            send(producer)
            probes += 1
            // Acquire: pairs with each consumer's add to `acks` (CShmBench.h).
            while CShmBench_load_acquire(&shared.pointee.acks) < probes * consumers { CShmAtomics_pause() }
            let now = ticks()
            if probes == 1 {
                shared.pointee.last_ticks = now  // the full-speed phase reached every consumer
                continue
            }
            if taken < capacity {
                samples[taken] = now &- begin
                taken += 1
            }
            if now >= end || taken == capacity { break }
        }
        shared.pointee.sample_count = UInt64(taken)
    }
}
