import Testing

@testable import ShmRing

#if canImport(Glibc)
import Glibc
#endif

extension MultiProcess {
    /// The ring across processes, heavy loops in the release-built peer (docs/testing.md). Sizes in
    /// the test command: 1 000 000 messages; by hand, 10 000 000 (docs/ring.md).
    @Suite struct RingAcrossProcessesTests {
        static var messages: Int {
            getenv("SHMRING_RING_MESSAGES").flatMap { Int(String(cString: $0)) } ?? 1_000_000
        }

        func run(consumers: Int, messages: Int, extraProducerArguments: [String] = []) throws {
            let key = uniqueKey()
            let producer = try ChildProcess(
                TestPeer.forHeavyLoops,
                [
                    "ring-produce", "--key", key, "--count", "\(messages)", "--wait-consumers", "\(consumers)",
                    "--capacity", "\(1 << 20)", "--max-size", "128", "--large-every", "100",
                ] + extraProducerArguments)
            try #require(producer.waitForReady("created"))
            let readers = try (0..<consumers).map { _ in
                try ChildProcess(
                    TestPeer.forHeavyLoops,
                    ["ring-consume", "--key", key, "--count", "\(messages)", "--from", "oldest"])
            }
            for reader in readers {
                #expect(reader.wait(timeout: .seconds(600)) == .exited(0), "\(reader.standardError)")
                let results = reader.results
                #expect(results["received"] == "\(messages)")
                #expect(results["gaps"] == "0", "\(results)")
                #expect(results["corrupted"] == "0", "\(results)")
                #expect(results["first_sequence"] == "0")
            }
            #expect(producer.wait(timeout: .seconds(600)) == .exited(0), "\(producer.standardError)")
            let results = producer.results
            #expect(results["published"] == "\(messages)")
            let seconds = Double(results["elapsed_ns"].flatMap(Int.init) ?? 0) / 1e9
            print(
                "ring: 1 producer, \(consumers) gating consumers, \(messages) messages in \(seconds) s, "
                    + "back-pressured \(results["back_pressured"] ?? "?") times")
        }

        /// 1 producer + 3 gating consumer processes; sizes mostly 24 ... 128 bytes, every 100th up
        /// to the maximum (256 KiB on this 1 MiB ring); every message checked by every consumer.
        @Test func threeGatingConsumersSeeEveryMessage() throws {
            try run(consumers: 3, messages: Self.messages)
        }

        /// The same through the wrap of the position space, and with batches of 16.
        @Test func acrossTheEndOfThePositionSpaceAndInBatches() throws {
            let nearTheEnd = (UInt64.max - (3 << 20)) & ~15
            try run(
                consumers: 2, messages: Self.messages / 10,
                extraProducerArguments: ["--initial-position", "\(nearTheEnd)"])
            try run(consumers: 2, messages: Self.messages / 10, extraProducerArguments: ["--batch", "16"])
        }

        /// A gating consumer killed with SIGKILL stops holding the producer back: the producer's
        /// server sees its rendezvous connection hang up and reclaims the slot.
        @Test func aKilledGatingConsumerReleasesTheProducer() throws {
            let key = uniqueKey()
            let producer = try RingProducer(key: key, configuration: RingConfiguration(capacity: 4096))
            let consumer = try ChildProcess(
                TestPeer.debug, ["ring-consume", "--key", key, "--count", "1000000000", "--from", "newest"],
                expectCrash: true)
            try #require(consumer.waitForReady("attached"))
            #expect(producer.activeConsumerCount == 1)
            consumer.signal(SIGSTOP)  // it reads nothing more: the ring fills
            var published = 0
            while try producer.publish([UInt8](repeating: 1, count: 100)) == .published { published += 1 }
            #expect(published < 4096 / 112 + 1, "held back by the stopped consumer")
            consumer.signal(SIGKILL)
            #expect(consumer.wait() == .signaled(SIGKILL))
            // Three laps must go through once the slot is reclaimed (bounded wait, not a timing).
            let message = [UInt8](repeating: 2, count: 100)
            for _ in 0..<(3 * 4096 / 112) {
                let result = try message.withUnsafeBytes { try producer.publish($0, timeout: .seconds(60)) }
                #expect(result == .published)
                if result != .published { break }
            }
            #expect(producer.activeConsumerCount == 0)
        }

        /// A consumer that fails after the handshake, and an observer once it is gone, leave no
        /// descriptor of the ring open in this process (the rendezvous connection owns what the
        /// reply carried until it is handed on, and closes the rest once).
        @Test func failedAttachmentsAndEndedObserversLeaveNoDescriptorOpen() throws {
            let key = uniqueKey()
            let producer = try ChildProcess(
                TestPeer.debug, ["ring-produce", "--key", key, "--count", "0", "--capacity", "4096"], expectCrash: true)
            defer {
                producer.signal(SIGKILL)
                producer.wait()
            }
            try #require(producer.waitForReady("created"))
            let header = "/memfd:shmring-ring:\(key) (deleted)"
            expectRingError(.invalidConfiguration) {
                // Beyond the capacity.
                _ = try RingConsumer(key: key, configuration: .init(lagLimit: LagLimit(bytes: 1 << 20)))
            }
            #expect(descriptorsOpen(linkingTo: header) == 0)
            do {
                let observer = try RingObserver(key: key)
                #expect(observer.snapshot().capacity == 4096)
                #expect(descriptorsOpen(linkingTo: header) == 1)
            }
            #expect(descriptorsOpen(linkingTo: header) == 0)
        }

        /// Consumers join and leave a tiny ring (4 KiB) while the producer runs at full speed; each
        /// joiner checks continuity from its join point. A steady gating consumer reads throughout.
        @Test func joinAndLeaveChurnOnATinyRing() throws {
            let key = uniqueKey()
            let producer = try ChildProcess(
                TestPeer.forHeavyLoops,
                [
                    "ring-produce", "--key", key, "--count", "0", "--capacity", "4096", "--max-size", "200",
                    "--large-every", "50",
                ],
                expectCrash: true)
            try #require(producer.waitForReady("created"))
            let steady = try ChildProcess(
                TestPeer.forHeavyLoops, ["ring-consume", "--key", key, "--count", "200000", "--from", "newest"])
            try #require(steady.waitForReady("attached"))
            let churners = try (0..<2).map { _ in
                try ChildProcess(
                    TestPeer.forHeavyLoops, ["ring-churn", "--key", key, "--rounds", "300", "--per-round", "300"])
            }
            for churner in churners {
                #expect(churner.wait(timeout: .seconds(600)) == .exited(0), "\(churner.standardError)")
                let results = churner.results
                #expect(results["rounds"] == "300")
                #expect(results["bad_rounds"] == "0", "\(results)")
                #expect(results["gaps"] == "0" && results["corrupted"] == "0", "\(results)")
            }
            #expect(
                steady.wait(timeout: .seconds(600)) == .exited(0),
                "\(steady.standardError); producer: \(producer.standardError)")
            #expect(steady.results["gaps"] == "0" && steady.results["corrupted"] == "0", "\(steady.results)")
            producer.signal(SIGKILL)
            producer.wait()
            print("churn: 2 processes x 300 joins of 300 messages on a 4 KiB ring, all continuous")
        }
    }
}
