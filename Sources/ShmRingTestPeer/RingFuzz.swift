import CShmAtomics
import ShmRing
import ShmRingTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// The fuzz test's two sides (RingFuzzTests): a producer whose mutator thread rewrites the ring's
/// shared memory at random while it publishes, and consumers that must see only valid messages or
/// typed errors, never crash and never hang.
///
/// The header and data memfd is sealed `F_SEAL_FUTURE_WRITE`: only the producer's own mapping can
/// write it, so the mutator is a thread of the producer (a broken or hostile producer). It also
/// rewrites every consumer's slot page through the producer's mapping (a broken or hostile
/// consumer, as the producer sees it).
enum RingFuzz {
    /// `--key K --seed S --cases N [--capacity C] [--pause-us P]`: creates the ring, publishes
    /// generated messages on the main thread while a mutator thread makes N random rewrites (P µs
    /// apart), then reports and exits (the consumers see the producer go).
    static func produce(_ options: PeerOptions) throws {
        var configuration = RingConfiguration(capacity: options.int("capacity", default: 1 << 16))
        configuration.maxConsumers = 8
        let producer = try RingProducer(key: options.string("key"), configuration: configuration)
        let cases = options.int("cases")
        let seed = UInt64(options.string("seed"))!
        let pause = UInt32(options.int("pause-us", default: 50))
        let counts = UnsafeMutablePointer<Int>.allocate(capacity: Target.allCases.count)
        counts.initialize(repeating: 0, count: Target.allCases.count)
        let done = UnsafeMutablePointer<UInt64>.allocate(capacity: 1)
        done.initialize(to: 0)
        let mutator = Mutator(
            header: UInt(bitPattern: producer.headerForTests), capacity: producer.capacity,
            slots: (0..<configuration.maxConsumers).map { UInt(bitPattern: producer.slotPageForTests($0)) },
            seed: seed)
        PeerRuntime.report("seed=\(seed)")
        PeerRuntime.ready("created")
        let thread = try startThread { [counts = UInt(bitPattern: counts), done = UInt(bitPattern: done)] in
            var mutator = mutator
            let counts = UnsafeMutablePointer<Int>(bitPattern: counts)!
            for _ in 0..<cases {
                counts[mutator.mutate().rawValue] += 1
                usleep(pause)
            }
            CShmAtomics_u64_store_release(UnsafeMutablePointer<UInt64>(bitPattern: done)!, 1)
        }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 256, alignment: 16)
        var sequence: UInt64 = 0
        var random = SplitMix64(seed: seed ^ 0x5151)
        // Acquire: pairs with the mutator's release store of `done`.
        while CShmAtomics_u64_load_acquire(done) == 0 {
            let length = GeneratedMessage.minimumLength + Int(random.next() % 200)
            let message = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<length])
            GeneratedMessage.write(sequence: sequence, timestamp: 0, into: message)
            if try producer.publish(UnsafeRawBufferPointer(message)) == .published {
                sequence += 1
            } else {
                usleep(10)  // back-pressured: a consumer (perhaps a rewritten one) holds the producer
            }
        }
        pthread_join(thread, nil)
        PeerRuntime.report("published=\(sequence)")
        PeerRuntime.report("cases=\(cases)")
        for target in Target.allCases { PeerRuntime.report("cases_\(target)=\(counts[target.rawValue])") }
        producer.close()
    }

    /// What the mutator rewrites.
    enum Target: Int, CaseIterable {
        case recordHeader, producerLine, boundaryIndex, counters, configuration, slotPage
    }

    struct Mutator {
        let header: UInt
        let capacity: Int
        let slots: [UInt]
        var random: SplitMix64

        init(header: UInt, capacity: Int, slots: [UInt], seed: UInt64) {
            self.header = header
            self.capacity = capacity
            self.slots = slots
            self.random = SplitMix64(seed: seed)
        }

        func word(_ address: UInt) -> UnsafeMutablePointer<UInt64> { UnsafeMutablePointer(bitPattern: address)! }

        /// A value that is sometimes plausible (near the current one), sometimes an edge, sometimes
        /// anything.
        mutating func value(near current: UInt64) -> UInt64 {
            switch random.next() % 6 {
            case 0: return 0
            case 1: return UInt64.max
            case 2: return current &+ random.next() % 512
            case 3: return current &- random.next() % 512
            case 4: return current ^ (1 << (random.next() % 64))
            default: return random.next()
            }
        }

        /// Rewrites one 8-byte word (relaxed atomic stores: the mutator races the producer's
        /// thread on purpose, not by accident).
        mutating func rewrite(_ address: UInt) {
            let pointer = word(address)
            CShmAtomics_u64_store_relaxed(pointer, value(near: CShmAtomics_u64_load_relaxed(pointer)))
        }

        mutating func mutate() -> Target {
            let target = Target(rawValue: Int(random.next() % UInt64(Target.allCases.count)))!
            switch target {
            case .recordHeader:
                // A record header word (commit, or length and type) somewhere in the data region.
                let offset = UInt(random.next() % UInt64(capacity / 8)) * 8
                rewrite(header + 4096 + offset)
            case .producerLine:
                rewrite(header + 128 + UInt(random.next() % 5) * 8)  // intent, version, tail, sequence, limit
            case .boundaryIndex:
                rewrite(header + 384 + UInt(random.next() % 16) * 32 + UInt(random.next() % 3) * 8)
            case .counters:
                rewrite(header + 256 + UInt(random.next() % 5) * 8)
            case .configuration:
                // Capacity, alignment/max length, consumers/header size, salt, magic: rewritten,
                // then restored a moment later (new attachers must refuse it, with a typed error).
                let offsets: [UInt] = [24, 32, 40, 72, 0, 8]
                let pointer = word(header + offsets[Int(random.next() % UInt64(offsets.count))])
                let saved = CShmAtomics_u64_load_relaxed(pointer)
                CShmAtomics_u64_store_relaxed(pointer, value(near: saved))
                usleep(200)
                CShmAtomics_u64_store_relaxed(pointer, saved)
            case .slotPage:
                // cursor, active, policy+pid, delivered, ..., joined, lag limits; or the notice.
                let slot = slots[Int(random.next() % UInt64(slots.count))]
                let offsets: [UInt] = [0, 8, 16, 56, 64, 72, 264]
                rewrite(slot + offsets[Int(random.next() % UInt64(offsets.count))])
            }
            return target
        }
    }

    /// `--key K --policy gating|lossy|limited [--seconds T]`: attaches, reads and checks until the
    /// producer goes away (or T seconds pass), re-attaching after every typed error that ends an
    /// attachment. Reports how many messages verified, how many did not (a header the mutator made
    /// plausible but wrong cannot be detected without a payload checksum), and each typed error.
    static func consume(_ options: PeerOptions) throws {
        let key = options.string("key")
        let kind = options.string("policy")
        let deadline = ContinuousClock.now + .seconds(options.int("seconds", default: 120))
        var valid = 0
        var altered = 0
        var attaches = 0
        var errors: [RingError.Code: Int] = [:]
        var ended = "producer gone"
        PeerRuntime.ready("started")
        attachments: while ContinuousClock.now < deadline {
            let consumer: RingConsumer
            do {
                consumer = try RingConsumer(
                    key: key,
                    configuration: .init(
                        policy: kind == "lossy" ? .lossy : .gating,
                        lagLimit: kind == "limited" ? LagLimit(bytes: 8192) : nil, timeout: .seconds(2)))
                attaches += 1
            } catch {
                if error.code == .notFound { break }  // the producer is gone
                errors[error.code, default: 0] += 1
                usleep(1000)
                continue
            }
            var idle = 0
            while ContinuousClock.now < deadline {
                var got = 0
                do {
                    got = try consumer.poll(limit: 1000) { bytes, info in
                        let outcome = bytes.withUnsafeBytes { GeneratedMessage.check($0) }
                        if case .valid(let carried, _) = outcome, carried == info.sequence {
                            valid += 1
                        } else {
                            altered += 1
                        }
                        return .continue
                    }
                } catch {
                    errors[error.code, default: 0] += 1
                    switch error.code {
                    case .demoted, .cannotKeepUp: break  // reading goes on (a producer that left
                    // a tail intent far ahead behind it makes every poll "cannot keep up")
                    default:
                        consumer.detach()
                        continue attachments  // corrupted, evicted, ...: attach again
                    }
                }
                if got > 0 {
                    idle = 0
                    continue
                }
                idle += 1
                if idle % 64 == 0 {
                    usleep(100)
                    if !consumer.isProducerAlive { break attachments }
                }
            }
            ended = "deadline"
            break
        }
        PeerRuntime.report("valid=\(valid)")
        PeerRuntime.report("altered=\(altered)")
        PeerRuntime.report("attaches=\(attaches)")
        PeerRuntime.report("ended=\(ended)")
        let summary = errors.sorted { "\($0.key)" < "\($1.key)" }.map { "\($0.key):\($0.value)" }
        PeerRuntime.report("errors=\(summary.joined(separator: ","))")
    }
}
