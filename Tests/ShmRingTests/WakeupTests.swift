import CShmLinux
import Foundation
import Testing

@testable import ShmRing

#if canImport(Glibc)
import Glibc
#endif

extension MultiProcess {
    /// Consumers that sleep and the producer that wakes them (docs/wakeup.md), across processes,
    /// heavy loops in the release-built peer. Nothing here depends on timing to pass: every wait
    /// has a timeout that only bounds a failure.
    @Suite struct WakeupTests {
        /// Whether this kernel lets a consumer sleep through io_uring (6.7+, io_uring allowed).
        static let ioURingSleeps = CShmLinux_uring_probe_futex_wait() == 1

        /// Waits (at most a minute: a bound, not a timing) until the ring's observer sees the
        /// consumer with process id `pid` inside a blocking wait.
        func waitUntilAsleep(key: String, pid: pid_t) throws -> Bool {
            let observer = try RingObserver(key: key)
            let deadline = ContinuousClock.now + .seconds(60)
            while ContinuousClock.now < deadline {
                if observer.snapshot().consumers.contains(where: { $0.pid == pid && $0.sleeping && $0.sleeps > 0 }) {
                    return true
                }
                usleep(1000)
            }
            return false
        }

        static var rounds: Int {
            getenv("SHMRING_WAKE_ROUNDS").flatMap { Int(String(cString: $0)) } ?? 100_000
        }

        /// A producer peer on a 64 KiB ring that waits for `consumers` consumers, then publishes
        /// `messages` generated messages with a pause after every `pauseEvery`.
        func burstyProducer(
            key: String, consumers: Int = 2, messages: Int, maxSize: Int, pauseEvery: Int, pauseMicroseconds: Int
        ) throws -> ChildProcess {
            let producer = try ChildProcess(
                TestPeer.forHeavyLoops,
                [
                    "ring-produce", "--key", key, "--count", "\(messages)", "--wait-consumers", "\(consumers)",
                    "--capacity", "\(1 << 16)", "--max-size", "\(maxSize)", "--large-every", "0",
                    "--pause-every", "\(pauseEvery)", "--pause-us", "\(pauseMicroseconds)",
                ])
            try #require(producer.waitForReady("created"))
            return producer
        }

        /// Four blocking consumers receive every message of bursty traffic (a pause after every
        /// few messages puts them to sleep), each one checked; the producer wakes at most once
        /// per announced wait, and waking takes it no system call while nobody sleeps.
        @Test func blockingConsumersReceiveEveryMessageOfBurstyTraffic() throws {
            let key = uniqueKey()
            let messages = 20_000
            let producer = try burstyProducer(
                key: key, consumers: 4, messages: messages, maxSize: 128, pauseEvery: 7, pauseMicroseconds: 50)
            let readers = try (0..<4).map { _ in
                try ChildProcess(
                    TestPeer.forHeavyLoops,
                    ["ring-wait-consume", "--key", key, "--count", "\(messages)", "--timeout-ms", "2000"])
            }
            var announced = 0
            for reader in readers {
                #expect(reader.wait(timeout: .seconds(300)) == .exited(0), "\(reader.standardError)")
                let results = reader.results
                #expect(results["received"] == "\(messages)", "\(results)")
                #expect(results["gaps"] == "0" && results["corrupted"] == "0", "\(results)")
                #expect(results["ended"] == "done")
                #expect(results["timeouts"] == "0", "a wait ran to its 2 s timeout: a lost wake-up? \(results)")
                #expect(Int(results["sleeps"] ?? "") ?? 0 > 0, "it never slept: \(results)")
                announced += Int(results["announced"] ?? "") ?? 0
                print("wake-up, bursty: consumer \(results)")
            }
            #expect(producer.wait(timeout: .seconds(300)) == .exited(0), "\(producer.standardError)")
            let wakes = Int(producer.results["wakes"] ?? "") ?? -1
            #expect(wakes > 0 && wakes <= announced, "\(wakes) wakes for \(announced) announced waits")
            print("wake-up, bursty: \(wakes) wakes for \(announced) announced waits of 4 consumers")
        }

        /// Sleep and wake, many times, between two processes that both block: a round trip in
        /// which each side waits for the other's message. No round may hang.
        @Test(arguments: [false, true])
        func sleepWakeCyclesBetweenTwoProcesses(fallback: Bool) throws {
            let key = uniqueKey()
            let rounds = fallback ? Self.rounds / 10 : Self.rounds
            let environment = fallback ? ["SHMRING_WAKE_FALLBACK": "1"] : [:]
            let sides = try ["pong", "ping"].map { side in
                try ChildProcess(
                    TestPeer.forHeavyLoops,
                    ["ring-wait-pingpong", "--key", key, "--rounds", "\(rounds)", "--side", side],
                    environment: environment)
            }
            for side in sides {
                #expect(side.wait(timeout: .seconds(600)) == .exited(0), "\(side.standardError)")
                let results = side.results
                #expect(results["rounds"] == "\(rounds)", "\(results)")
                #expect(results["timeouts"] == "0", "a wait ran to its 5 s timeout: a lost wake-up? \(results)")
                #expect(Int(results["sleeps"] ?? "") ?? 0 > 0, "\(results)")
                if fallback || Self.ioURingSleeps {
                    #expect((results["fallback"] == "none") != fallback, "\(results)")
                }
                print("wake-up, round trips (fallback \(fallback)): \(results)")
            }
        }

        /// A consumer asleep with a long timeout learns at once that the producer died.
        @Test func aSleepingConsumerSeesTheProducerDie() throws {
            let key = uniqueKey()
            let producer = try ChildProcess(
                TestPeer.debug, ["ring-produce", "--key", key, "--count", "10", "--wait-consumers", "1"],
                expectCrash: true)
            try #require(producer.waitForReady("created"))
            let reader = try ChildProcess(
                TestPeer.debug, ["ring-wait-consume", "--key", key, "--count", "1000", "--timeout-ms", "600000"])
            try #require(producer.waitForReady("published"))
            // Asleep (it read the 10 messages and waits for more) before the producer dies.
            try #require(try waitUntilAsleep(key: key, pid: reader.pid))
            producer.signal(SIGKILL)
            #expect(producer.wait() == .signaled(SIGKILL))
            // Far below the consumer's own 10-minute timeout: only the hang-up can end its sleep.
            #expect(reader.wait(timeout: .seconds(60)) == .exited(0), "\(reader.standardError)")
            #expect(reader.results["received"] == "10")
            #expect(reader.results["ended"] == "producerGone", "\(reader.results)")
            #expect(Int(reader.results["sleeps"] ?? "") ?? 0 >= 1, "\(reader.results)")
        }

        /// A consumer that spins (`idle(using: .spin)`, no blocking wait) also learns that the
        /// producer died, after reading everything it published, and its idleness costs about
        /// one system call per millisecond, not one per poll (strace counts them).
        @Test func aSpinningConsumerSeesTheProducerDieWithoutASystemCallPerPoll() throws {
            let key = uniqueKey()
            let producer = try ChildProcess(
                TestPeer.forHeavyLoops, ["ring-produce", "--key", key, "--count", "10", "--wait-consumers", "1"],
                expectCrash: true)
            try #require(producer.waitForReady("created"))
            let report = "/tmp/shmring-strace-spin-\(getpid()).txt"
            defer { unlink(report) }
            let reader = try ChildProcess(
                "/usr/bin/strace",
                [
                    "-f", "-c", "-o", report, TestPeer.forHeavyLoops, "ring-wait-consume", "--key", key, "--count",
                    "1000", "--idle", "spin",
                ])
            try #require(producer.waitForReady("published"))
            // The reader spins, idle, for about half a second (how long exactly does not matter:
            // it is measured, and the bound below scales with it).
            let idleSince = ContinuousClock.now
            usleep(500_000)
            producer.signal(SIGKILL)
            #expect(producer.wait() == .signaled(SIGKILL))
            #expect(reader.wait(timeout: .seconds(60)) == .exited(0), "\(reader.standardError)")
            let idleMilliseconds = Int((ContinuousClock.now - idleSince).clampedNanoseconds / 1_000_000)
            let results = reader.standardOutput
            #expect(results.contains("received=10"), "\(results)")
            #expect(results.contains("ended=producerGone"), "\(results)")
            let text = try String(contentsOfFile: report, encoding: .utf8)
            let total = text.split(separator: "\n").last { $0.hasSuffix("total") }?.split(separator: " ")
            let calls = total.flatMap { $0.count >= 4 ? Int($0[3]) : nil } ?? -1
            // Start-up and attaching take a few hundred; then about one poll(2) per millisecond.
            // One per poll would be millions.
            #expect(
                calls > 0 && calls < 1000 + 3 * idleMilliseconds,
                "\(calls) system calls in \(idleMilliseconds) ms of idleness:\n\(text)")
            print("wake-up, spinning consumer: \(calls) system calls, \(idleMilliseconds) ms idle")
        }

        /// A consumer killed while asleep never counts itself out of the doorbell's `sleepers`:
        /// the producer's server does, from its slot's `counted_waits`, when it reclaims the slot.
        @Test func aConsumerKilledAsleepIsCountedOutOfTheSleepers() throws {
            let key = uniqueKey()
            let producer = try RingProducer(key: key, configuration: RingConfiguration(capacity: 1 << 16))
            let reader = try ChildProcess(
                TestPeer.debug, ["ring-wait-consume", "--key", key, "--count", "1", "--timeout-ms", "600000"],
                expectCrash: true)
            // Bounds of a minute each, not timings.
            func until(_ condition: () -> Bool) -> Bool {
                let deadline = ContinuousClock.now + .seconds(60)
                while !condition() && ContinuousClock.now < deadline { usleep(1000) }
                return condition()
            }
            #expect(until { producer.doorbellForTests.sleepers == 1 }, "the consumer never slept")
            reader.signal(SIGKILL)
            #expect(reader.wait() == .signaled(SIGKILL))
            #expect(until { producer.activeConsumerCount == 0 }, "the slot was not reclaimed")
            #expect(
                until { producer.doorbellForTests.sleepers == 0 },
                "still \(producer.doorbellForTests.sleepers) sleepers after the only one died")
        }

        /// `reattached()` after the producer went: the next producer of the key, a new ring (new
        /// segment id), read from its oldest message; nobody there is `.notFound` after the timeout.
        @Test func aConsumerReattachesToTheNextProducer() throws {
            let key = uniqueKey()
            var first: RingProducer? = try RingProducer(key: key, configuration: RingConfiguration(capacity: 1 << 16))
            let consumer = try RingConsumer(key: key)
            try first?.publish([1])
            #expect(try consumer.poll { _, _ in .continue } == 1)
            first?.close()
            first = nil
            #expect(try consumer.wait(timeout: .seconds(60)) == .producerGone)
            // Nobody serves the key for now.
            #expect {
                _ = try RingConsumer.attach(waitingFor: key, timeout: .milliseconds(50))
            } throws: { ($0 as? RingError)?.code == .notFound }
            let second = try RingProducer(key: key, configuration: RingConfiguration(capacity: 1 << 16))
            try second.publish([2])
            try second.publish([3])
            let next = try consumer.reattached(timeout: .seconds(60))
            #expect(next.segmentID != consumer.segmentID)
            var received: [[UInt8]] = []
            try next.poll { bytes, _ in
                received.append(bytes.withUnsafeBytes { [UInt8]($0) })
                return .continue
            }
            #expect(received == [[2], [3]])
        }

        /// A hostile consumer that scribbles over the doorbell for the whole run can neither block
        /// nor stop the producer, and an honest blocking consumer still receives everything (its
        /// sleeps end by their timeout at worst).
        @Test func aHostileDoorbellWriterCannotStopTheProducer() throws {
            let key = uniqueKey()
            let messages = 200_000
            let producer = try burstyProducer(
                key: key, messages: messages, maxSize: 64, pauseEvery: 100, pauseMicroseconds: 20)
            let hostile = try ChildProcess(TestPeer.forHeavyLoops, ["ring-doorbell-scribble", "--key", key])
            try #require(hostile.waitForReady("attached"))
            let reader = try ChildProcess(
                TestPeer.forHeavyLoops,
                ["ring-wait-consume", "--key", key, "--count", "\(messages)", "--timeout-ms", "5"])
            #expect(reader.wait(timeout: .seconds(300)) == .exited(0), "\(reader.standardError)")
            #expect(reader.results["received"] == "\(messages)", "\(reader.results)")
            #expect(reader.results["corrupted"] == "0" && reader.results["gaps"] == "0")
            // The producer published everything while the scribbler ran.
            try #require(producer.waitForReady("published"))
            hostile.signal(SIGKILL)
            #expect(hostile.wait() == .signaled(SIGKILL))
            #expect(producer.wait(timeout: .seconds(120)) == .exited(0), "\(producer.standardError)")
            print("wake-up, hostile doorbell: producer \(producer.results), consumer \(reader.results)")
        }

        /// A producer that blocks on a full ring (the mirrored direction) is woken when the slow
        /// gating consumer reads on, and publishes everything; no wait runs to its timeout.
        @Test func aProducerBlockedOnAFullRingWakesWhenAConsumerDrains() throws {
            let key = uniqueKey()
            let messages = 20_000
            let producer = try ChildProcess(
                TestPeer.forHeavyLoops,
                [
                    "ring-produce", "--key", key, "--count", "\(messages)", "--wait-consumers", "1",
                    "--capacity", "4096", "--max-size", "64", "--large-every", "0", "--idle", "block",
                ])
            try #require(producer.waitForReady("created"))
            // Gating, and slow: a 1 ms nap every 200 messages, so the 4 KiB ring fills up.
            let reader = try ChildProcess(
                TestPeer.forHeavyLoops,
                [
                    "ring-consume-lossy", "--key", key, "--until", "\(messages)", "--policy", "gating",
                    "--sleep-every", "200", "--sleep-us", "1000",
                ])
            #expect(reader.wait(timeout: .seconds(300)) == .exited(0), "\(reader.standardError)")
            #expect(reader.results["delivered"] == "\(messages)", "\(reader.results)")
            #expect(reader.results["corrupted"] == "0" && reader.results["lapped_messages"] == "0", "\(reader.results)")
            #expect(
                Int(reader.results["producer_wakes"] ?? "") ?? 0 > 0, "it never woke the producer: \(reader.results)")
            #expect(producer.wait(timeout: .seconds(120)) == .exited(0), "\(producer.standardError)")
            let results = producer.results
            #expect(results["published"] == "\(messages)")
            #expect(Int(results["space_sleeps"] ?? "") ?? 0 > 0, "it never slept on the full ring: \(results)")
            #expect(results["space_timeouts"] == "0", "a sleep ran to its 30 s timeout: a lost wake-up? \(results)")
            print("wake-up, full ring: producer \(results)")
        }

        /// A producer asleep on a full ring because of a consumer that then dies is woken at once
        /// (the slot's reclaim moves the word it sleeps on), not by its 30 s timeout.
        @Test func aProducerAsleepOnAFullRingWakesWhenItsConsumerDies() throws {
            let key = uniqueKey()
            let producer = try ChildProcess(
                TestPeer.forHeavyLoops,
                [
                    "ring-produce", "--key", key, "--count", "2000", "--wait-consumers", "1", "--capacity", "4096",
                    "--max-size", "64", "--large-every", "0", "--idle", "block",
                ])
            try #require(producer.waitForReady("created"))
            let reader = try ChildProcess(
                TestPeer.debug, ["ring-consume", "--key", key, "--count", "1000000", "--from", "oldest"],
                expectCrash: true)
            try #require(reader.waitForReady("attached"))
            reader.signal(SIGSTOP)  // it reads no more: the 4 KiB ring fills and the producer sleeps
            let observer = try RingObserver(key: key)
            let deadline = ContinuousClock.now + .seconds(60)
            while observer.snapshot().producerSleeps == 0 && ContinuousClock.now < deadline { usleep(1000) }
            try #require(observer.snapshot().producerSleeps > 0, "the producer never slept")
            reader.signal(SIGKILL)
            #expect(reader.wait() == .signaled(SIGKILL))
            #expect(producer.wait(timeout: .seconds(120)) == .exited(0), "\(producer.standardError)")
            #expect(producer.results["published"] == "2000")
            #expect(
                producer.results["space_timeouts"] == "0", "woken by the timeout, not the reclaim: \(producer.results)")
        }

        /// A consumer blocked for five seconds uses under 1 % of a CPU (user + system time from
        /// /proc/PID/stat, in clock ticks).
        @Test func aBlockedConsumerUsesAlmostNoCPU() throws {
            let key = uniqueKey()
            let producer = try RingProducer(key: key, configuration: RingConfiguration(capacity: 1 << 16))
            let reader = try ChildProcess(
                TestPeer.forHeavyLoops, ["ring-wait-consume", "--key", key, "--count", "1", "--timeout-ms", "60000"])
            try #require(reader.waitForReady("attached"))
            func cpuTicks() throws -> Int {
                let stat = try String(contentsOfFile: "/proc/\(reader.pid)/stat", encoding: .utf8)
                // Fields after the command name (which ends with ")"): utime is the 12th, stime the 13th.
                let fields = stat[stat.range(of: ")")!.upperBound...].split(separator: " ")
                return Int(fields[11])! + Int(fields[12])!
            }
            try #require(try waitUntilAsleep(key: key, pid: reader.pid))
            let before = try cpuTicks()
            let ticksPerSecond = sysconf(Int32(_SC_CLK_TCK))
            usleep(5_000_000)
            let used = try cpuTicks() - before
            #expect(used * 100 <= 5 * ticksPerSecond, "\(used) ticks of CPU in 5 s (\(ticksPerSecond) a second)")
            try producer.publish([UInt8](repeating: 0, count: 8))
            #expect(reader.wait(timeout: .seconds(60)) == .exited(0), "\(reader.standardError)")
            print("wake-up: a blocked consumer used \(used) clock ticks in 5 s")
        }
    }
}
