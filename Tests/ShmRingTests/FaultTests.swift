import ShmRingTestSupport
import Testing

@testable import ShmRing

#if canImport(Glibc)
import Glibc
#endif

extension MultiProcess {
    /// Peers that stop, hang mid-join, or run out of resources (docs/failure-model.md). Nothing
    /// here depends on timing to pass: every wait has a bound that only limits a failure.
    @Suite struct FaultTests {
        /// A generated message (sequence, timestamp 0, checksum, filler) of 24 + sequence % 41 bytes.
        func message(_ sequence: UInt64) -> [UInt8] {
            var bytes = [UInt8](repeating: 0, count: 24 + Int(sequence % 41))
            bytes.withUnsafeMutableBytes { GeneratedMessage.write(sequence: sequence, timestamp: 0, into: $0) }
            return bytes
        }

        /// Stops `consumer` with SIGSTOP once it says it attached, and waits until it is stopped.
        func stopOnceAttached(_ consumer: ChildProcess) throws {
            try #require(consumer.waitForReady("attached"))
            consumer.signal(SIGSTOP)
            try #require(waitUntilStopped(consumer.pid))
        }

        /// Waits (a minute at most: a bound) until process `pid` is stopped: SIGSTOP takes effect
        /// asynchronously. /proc/PID/stat's state, after the command name's closing parenthesis.
        func waitUntilStopped(_ pid: pid_t) -> Bool {
            let deadline = ContinuousClock.now + .seconds(60)
            while ContinuousClock.now < deadline {
                if let stat = readSmallFile("/proc/\(pid)/stat"), let close = stat.lastIndex(of: ")"),
                    stat[stat.index(after: close)...].dropFirst().first == "T"
                {
                    return true
                }
                usleep(1000)
            }
            return false
        }

        /// Attaches a consumer of `key`, trying again while every slot is taken, for at most a
        /// minute (a bound, not a timing).
        func attachWhenASlotFrees(_ key: String) throws -> RingConsumer? {
            let deadline = ContinuousClock.now + .seconds(60)
            while ContinuousClock.now < deadline {
                if let consumer = try attachUnlessFull(key) { return consumer }
                usleep(5000)
            }
            return nil
        }

        /// A consumer of `key`, or nil when every slot is taken.
        func attachUnlessFull(_ key: String) throws(RingError) -> RingConsumer? {
            do {
                return try RingConsumer(key: key)
            } catch {
                guard error.code == .tooManyConsumers else { throw error }
                return nil
            }
        }

        /// A ring with one consumer slot, and a peer that took it with the handshake and never joins.
        func oneSlotTakenByAJoiner(key: String, joinTimeout: Duration) throws -> (RingProducer, ChildProcess) {
            var configuration = RingConfiguration(capacity: 4096)
            configuration.maxConsumers = 1
            configuration.joinTimeout = joinTimeout
            let producer = try RingProducer(key: key, configuration: configuration)
            let joiner = try ChildProcess(TestPeer.debug, ["ring-reserve", "--key", key], expectCrash: true)
            try #require(joiner.waitForReady("reserved"))
            return (producer, joiner)
        }

        /// A joiner that takes its slot and never joins (it hangs, or was stopped mid-join) loses
        /// it after the ring's join timeout: the producer refuses its join for good (a late one
        /// would find `joinRefused` in its page), ends its connection, and the slot goes to the
        /// next consumer. The joiner is alive throughout: the timeout did it, not a death.
        @Test func aJoinerThatNeverJoinsLosesItsSlotAfterTheJoinTimeout() throws {
            let key = uniqueKey()
            let (producer, joiner) = try oneSlotTakenByAJoiner(key: key, joinTimeout: .milliseconds(300))
            defer {
                joiner.signal(SIGKILL)
                joiner.wait()
            }
            // Reserved, not joined: it does not hold the producer back.
            #expect(producer.activeConsumerCount == 0)
            try #require(joiner.waitForReady("ended", timeout: .seconds(60)))
            #expect(joiner.results["joined_word"] == "\(UInt64.max)", "the join is refused for good")
            let consumer = try #require(try attachWhenASlotFrees(key))
            #expect(producer.joinTimeouts == 1)
            #expect(consumer.slotIndex == 0)
            #expect(kill(joiner.pid, 0) == 0, "the joiner is alive: its slot went by the timeout")
            consumer.detach()
        }

        /// A joiner that dies holding its reservation frees it at once (its connection hangs up),
        /// long before the join timeout.
        @Test func aJoinerKilledMidJoinFreesItsSlotAtOnce() throws {
            let key = uniqueKey()
            let (producer, joiner) = try oneSlotTakenByAJoiner(key: key, joinTimeout: .seconds(3600))
            expectRingError(.tooManyConsumers) { _ = try RingConsumer(key: key) }
            joiner.signal(SIGKILL)
            #expect(joiner.wait() == .signaled(SIGKILL))
            let consumer = try #require(try attachWhenASlotFrees(key))
            #expect(producer.joinTimeouts == 0)
            consumer.detach()
        }

        /// A stopped consumer (SIGSTOP, a debugger) is not dead: a gating producer waits for it
        /// for as long as it is stopped, and once it runs again it reads every message, in order.
        @Test func aStoppedConsumerIsNotTakenForDead() throws {
            let key = uniqueKey()
            let producer = try RingProducer(key: key, configuration: RingConfiguration(capacity: 4096))
            let messages = 2000
            let consumer = try ChildProcess(
                TestPeer.debug, ["ring-consume", "--key", key, "--count", "\(messages)"], expectCrash: true)
            defer {
                consumer.signal(SIGKILL)
                consumer.wait()
            }
            try stopOnceAttached(consumer)
            var sequence: UInt64 = 0
            func publishNext() throws -> PublishResult {
                let result = try producer.publish(message(sequence))
                if result == .published { sequence += 1 }
                return result
            }
            while try publishNext() == .published { try #require(sequence < 4096, "held back by the stopped consumer") }
            // Stopped for a while (many times the liveness checks' periods): still held back,
            // still a consumer.
            for _ in 0..<100 {
                usleep(5000)
                #expect(try publishNext() == .backPressured)
            }
            #expect(producer.activeConsumerCount == 1)
            #expect(producer.evictions == 0)
            consumer.signal(SIGCONT)
            while Int(sequence) < messages {
                let result = try message(sequence).withUnsafeBytes { try producer.publish($0, timeout: .seconds(60)) }
                try #require(result == .published)
                sequence += 1
            }
            #expect(consumer.wait() == .exited(0))
            #expect(consumer.results["received"] == "\(messages)")
            #expect(consumer.results["gaps"] == "0")
            #expect(consumer.results["corrupted"] == "0")
        }

        /// A stopped consumer with a lag limit is demoted once it is that far behind, and the
        /// producer goes on without it; resumed, it learns it was demoted and what it missed.
        @Test func aStoppedConsumerWithALagLimitIsDemotedAndTheProducerGoesOn() throws {
            let key = uniqueKey()
            let producer = try RingProducer(key: key, configuration: RingConfiguration(capacity: 16384))
            let messages: UInt64 = 5000
            let consumer = try ChildProcess(
                TestPeer.debug,
                [
                    "ring-consume-lossy", "--key", key, "--policy", "gating", "--lag-bytes", "4096", "--until",
                    "\(messages)",
                ], expectCrash: true)
            defer {
                consumer.signal(SIGKILL)
                consumer.wait()
            }
            try stopOnceAttached(consumer)
            for sequence in 0..<messages {
                // Never held back for long: the demotion lets it through (the timeout only bounds
                // a failure).
                let result = try message(sequence).withUnsafeBytes { try producer.publish($0, timeout: .seconds(60)) }
                try #require(result == .published)
            }
            #expect(producer.evictions == 0)
            consumer.signal(SIGCONT)
            #expect(consumer.wait() == .exited(0))
            #expect(consumer.results["demoted"] == "1")
            #expect(consumer.results["corrupted"] == "0")
            #expect(consumer.results["unreported_gaps"] == "0")
            let lapped: Int = consumer.results["lapped_messages"].flatMap { Int($0) } ?? 0
            #expect(lapped > 0, "it missed what was overwritten while it was stopped")
        }

        /// Under a low RLIMIT_NOFILE a consumer's attach fails with a typed error (the reply's
        /// descriptors are cut off: MSG_CTRUNC, or a later descriptor cannot be opened), leaves
        /// no descriptor open, and the producer gets the slot back. With room enough, it attaches.
        @Test func aConsumerShortOfDescriptorsGetsATypedErrorAndLeaksNothing() throws {
            let key = uniqueKey()
            var configuration = RingConfiguration(capacity: 4096)
            configuration.maxConsumers = 1
            let producer = try RingProducer(key: key, configuration: configuration)
            var failures: [String] = []
            for spare in 0...6 {
                let peer = try ChildProcess(
                    TestPeer.debug, ["ring-attach-limited", "--key", key, "--spare", "\(spare)"])
                #expect(peer.wait() == .exited(0))
                let results = peer.results
                #expect(results["descriptors_before"] == results["descriptors_after"], "spare \(spare): \(results)")
                if let code = results["error_code"] {
                    #expect(["outOfResources"].contains(code), "spare \(spare): \(results)")
                    failures.append(code)
                } else {
                    #expect(results["attached"] == "1", "spare \(spare): \(results)")
                }
                // The slot came back either way (the only one: the next peer would be refused).
                let deadline = ContinuousClock.now + .seconds(60)
                while true {
                    let free: Bool = try producer.activeConsumerCount == 0 && slotIsFree(key)
                    if free { break }
                    try #require(ContinuousClock.now < deadline)
                    usleep(2000)
                }
            }
            #expect(!failures.isEmpty, "the lowest limits must fail")
            #expect(failures.count < 7, "with room enough, it attaches")
        }

        /// Whether the ring's one slot can be taken now (attaches and detaches at once).
        func slotIsFree(_ key: String) throws -> Bool {
            guard let consumer = try attachUnlessFull(key) else { return false }
            consumer.detach()
            return true
        }

        /// A ring larger than RLIMIT_FSIZE is a typed error (EFBIG, not SIGXFSZ), and leaves no
        /// descriptor open and the key free.
        @Test func aRingAboveTheFileSizeLimitIsATypedError() throws {
            let key = uniqueKey()
            let peer = try ChildProcess(
                TestPeer.debug,
                ["ring-create-limited", "--key", key, "--capacity", "\(1 << 20)", "--fsize-limit", "65536"])
            #expect(peer.wait() == .exited(0))
            let results = peer.results
            #expect(results["error_code"] == "outOfResources", "\(results)")
            #expect(results["error"]?.contains("RLIMIT_FSIZE") == true, "\(results)")
            #expect(results["descriptors_before"] == results["descriptors_after"], "\(results)")
            let producer = try RingProducer(key: key, configuration: RingConfiguration(capacity: 4096))
            producer.close()
        }
    }
}
