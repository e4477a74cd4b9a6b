import CShmLinux
import CShmTestSupport
import Foundation
import ShmRingTestSupport
import Testing

@testable import ShmRing

#if canImport(Glibc)
import Glibc
#endif

extension MultiProcess {
    /// The shapes the wake-up path takes for its users (docs/wakeup.md, "AsyncSequence", "Event
    /// loops", "Waking many"): an `AsyncSequence`, an eventfd for an event loop, and many sleepers
    /// woken at once. Bounded by timeouts that only bound a failure.
    @Suite struct WakeIntegrationTests {
        /// Checks generated messages in order: content, and the sequence they carry.
        struct Checker {
            var received = 0
            var bad = 0
            var expected: UInt64 = 0

            mutating func check(_ bytes: [UInt8], _ info: RingRecordInfo) {
                defer {
                    expected = info.sequence &+ 1
                    received += 1
                }
                let outcome = bytes.withUnsafeBytes { GeneratedMessage.check($0) }
                guard info.sequence == expected, case .valid(let carried, _) = outcome, carried == expected else {
                    bad += 1
                    return
                }
            }
        }

        /// A producer peer publishing `messages` generated messages with a pause of `pause` µs
        /// after every 50, so that a blocking consumer sleeps; it waits for one consumer first.
        func pausingProducer(key: String, messages: Int, pause: Int = 300) throws -> ChildProcess {
            try WakeupTests().burstyProducer(
                key: key, consumers: 1, messages: messages, maxSize: 200, pauseEvery: 50, pauseMicroseconds: pause)
        }

        /// Iterates `consumer.messages(idle:)` in a task, checking every message, until the
        /// iteration ends or `count` messages came; a watchdog cancels it after `bound` (a bound
        /// on a failure, not a timing). Returns the checker and whether the watchdog fired.
        func iterate(
            _ consumer: RingConsumer, idle: IdleStrategy = .block(), count: Int, bound: Duration = .seconds(120),
            onMessage: @escaping @Sendable (Int) -> Void = { _ in }
        ) async throws -> (Checker, cancelled: Bool) {
            nonisolated(unsafe) let consumer = consumer  // used by the task alone until it returns
            let iteration = Task {
                var checker = Checker()
                for try await message in consumer.messages(idle: idle) {
                    checker.check(message.bytes, message.info)
                    onMessage(checker.received)
                    if checker.received == count { break }
                }
                return (checker, Task.isCancelled)
            }
            let watchdog = Task {
                try await Task.sleep(for: bound)
                iteration.cancel()
            }
            defer { watchdog.cancel() }
            return try await iteration.value
        }

        /// `for try await` receives every message of a verified stream, sleeping between bursts.
        @Test func anAsyncSequenceDeliversEveryMessageOfAVerifiedStream() async throws {
            let key = uniqueKey()
            let messages = 20_000
            // Pauses of 2 ms: longer than the spin and yield stages of `.block`, so that it sleeps.
            let producer = try pausingProducer(key: key, messages: messages, pause: 2000)
            let consumer = try RingConsumer(key: key, configuration: .init(start: .oldest))
            let (checker, cancelled) = try await iterate(
                consumer, idle: .block(timeout: .seconds(2)), count: messages)
            #expect(!cancelled, "the iteration stalled at \(checker.received) messages")
            #expect(checker.received == messages)
            #expect(checker.bad == 0)
            #expect(consumer.sleeps > 0, "it never slept")
            print("wake-up, AsyncSequence: \(checker.received) messages, \(consumer.sleeps) sleeps")
            consumer.detach()
            #expect(producer.wait(timeout: .seconds(120)) == .exited(0), "\(producer.standardError)")
        }

        /// The iteration ends with the producer: everything committed is delivered, then `nil`.
        @Test func anAsyncSequenceEndsWhenTheProducerGoes() async throws {
            let key = uniqueKey()
            let producer = try pausingProducer(key: key, messages: 1_000)
            let consumer = try RingConsumer(key: key, configuration: .init(start: .oldest))
            // Once everything was published, the producer waits for this consumer to detach:
            // kill it then. The iteration must end by itself (count: more than will come).
            nonisolated(unsafe) let victim = producer
            let (checker, cancelled) = try await iterate(consumer, count: .max) { received in
                if received == 1_000 { victim.signal(SIGKILL) }
            }
            #expect(!cancelled, "the iteration did not end when the producer went")
            #expect(checker.received == 1_000 && checker.bad == 0)
            _ = producer.wait(timeout: .seconds(60))
        }

        /// With `reattach: .follow`, the iteration goes on with the next producer of the key: its
        /// messages carry the new segment id and their own sequence numbers, after every message
        /// of the first producer.
        @Test func anAsyncSequenceFollowsTheNextProducer() async throws {
            let key = uniqueKey()
            let first = try RingProducer(key: key, configuration: RingConfiguration(capacity: 1 << 16))
            let consumer = try RingConsumer(key: key)
            _ = try first.publish([1])
            _ = try first.publish([2])
            first.close()  // gone, with two messages left to read
            var second: RingProducer?
            var received: [(byte: UInt8, sequence: UInt64, ring: SegmentID)] = []
            for try await message in consumer.messages(reattach: .follow(timeout: .seconds(60))) {
                received.append((message.bytes[0], message.info.sequence, message.segmentID))
                if received.count == 2 {
                    // The next producer: the consumer, waiting for one, reads it from its oldest.
                    let next = try RingProducer(key: key, configuration: RingConfiguration(capacity: 1 << 16))
                    _ = try next.publish([3])
                    _ = try next.publish([4])
                    second = next
                }
                if received.count == 4 { break }
            }
            let next = try #require(second)
            #expect(received.map(\.byte) == [1, 2, 3, 4])
            #expect(received.map(\.sequence) == [0, 1, 0, 1])
            #expect(received.map(\.ring) == [first.segmentID, first.segmentID, next.segmentID, next.segmentID])
            next.close()
        }

        /// With no next producer within the policy's timeout, the iteration throws `.notFound`.
        @Test func anAsyncSequenceGivesUpOnTheNextProducerAfterItsTimeout() async throws {
            let key = uniqueKey()
            let producer = try RingProducer(key: key, configuration: RingConfiguration(capacity: 1 << 16))
            let consumer = try RingConsumer(key: key)
            _ = try producer.publish([7])
            producer.close()
            var bytes: [[UInt8]] = []
            var thrown: RingError.Code?
            do {
                for try await message in consumer.messages(reattach: .follow(timeout: .milliseconds(100))) {
                    bytes.append(message.bytes)
                }
            } catch {
                thrown = error.code
            }
            #expect(bytes == [[7]])
            #expect(thrown == .notFound)
        }

        /// Leaving the loop early (`break`) ends the iterator's waiting thread, and the consumer
        /// can be iterated again.
        @Test func leavingTheLoopEarlyEndsItsWaitingThread() async throws {
            let key = uniqueKey()
            let producer = try RingProducer(key: key, configuration: RingConfiguration(capacity: 1 << 16))
            let consumer = try RingConsumer(key: key)
            // Publishes once the consumer sleeps (so that the loop has started its thread).
            nonisolated(unsafe) let (publishing, watched) = (producer, consumer)
            let publisher = Thread {
                let deadline = ContinuousClock.now + .seconds(60)
                while watched.sleeps == 0 && ContinuousClock.now < deadline { usleep(1000) }
                _ = try? publishing.publish([1])
                _ = try? publishing.publish([2])
            }
            publisher.start()
            var first: [UInt8] = []
            for try await message in consumer.messages() {
                first = message.bytes
                break
            }
            #expect(first == [1])
            #expect(consumer.sleeps > 0, "the loop never waited")
            #expect(consumer.waitingThreads == 0, "the waiting thread outlived the loop")
            var second: [UInt8] = []
            for try await message in consumer.messages() {
                second = message.bytes
                break
            }
            #expect(second == [2])
            #expect(consumer.waitingThreads == 0)
        }

        /// Cancelling tasks that iterate (four, more than the cooperative pool's threads here)
        /// ends each iteration at once, while another task keeps running meanwhile: the waits are
        /// off the pool.
        @Test func cancellingEndsTheIterationPromptlyWhileOtherTasksGoOn() async throws {
            let key = uniqueKey()
            let producer = try RingProducer(key: key, configuration: RingConfiguration(capacity: 1 << 16))
            let ticks = Counter()
            let ticker = Task {
                while !Task.isCancelled {
                    try? await Task.sleep(for: .milliseconds(1))
                    ticks.add()
                }
            }
            let iterations = (0..<4).map { _ in
                Task {
                    let consumer = try RingConsumer(key: key)
                    var received = 0
                    for try await _ in consumer.messages() { received += 1 }
                    return received
                }
            }
            // Wait (at most a minute: a bound) until every consumer sleeps, then until the
            // ticker has moved on 20 more times while they do.
            // (An observer maps the slot pages of its time: a new one each look.)
            let deadline = ContinuousClock.now + .seconds(60)
            func sleeping() throws -> Int {
                try RingObserver(key: key).snapshot().consumers.filter { $0.sleeping && $0.sleeps > 0 }.count
            }
            while try sleeping() < 4 && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(10))
            }
            #expect(try sleeping() == 4, "not every consumer slept")
            let before = ticks.value
            while ticks.value < before + 20 && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(1))
            }
            #expect(ticks.value >= before + 20, "the ticker stalled while four consumers slept")
            let cancelled = ContinuousClock.now
            for iteration in iterations { iteration.cancel() }
            for iteration in iterations {
                let received = try await iteration.value
                #expect(received == 0)
            }
            let took = ContinuousClock.now - cancelled
            // A bound, not a timing: with io_uring the sleep ends on the cancellation's eventfd.
            #expect(took < .seconds(5), "cancelling took \(took)")
            ticker.cancel()
            print("wake-up, AsyncSequence cancelled: four iterations ended \(took) after the cancel")
            withExtendedLifetime(producer) {}
        }

        /// An `epoll` loop that serves a socket and a consumer's wake-up eventfd: every message
        /// arrives, verified, and every line sent on the socket too.
        @Test func anEpollLoopReceivesEveryMessageNextToASocket() throws {
            guard CShmLinux_uring_probe_futex_wait() == 1 else { return }  // no eventfd without io_uring
            let key = uniqueKey()
            let messages = 20_000
            let producer = try pausingProducer(key: key, messages: messages)
            let consumer = try RingConsumer(key: key, configuration: .init(start: .oldest))
            let wake = try consumer.wakeEventDescriptor()
            var pair: [Int32] = [0, 0]
            try #require(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &pair) == 0)
            defer {
                close(pair[0])
                close(pair[1])
            }
            // Another thread sends 200 bytes on the socket, one at a time, while the ring flows.
            let sendEnd = pair[1]
            let sender = Thread {
                for _ in 0..<200 {
                    var byte: UInt8 = 1
                    _ = write(sendEnd, &byte, 1)
                    usleep(500)
                }
            }
            sender.start()
            let epoll = CShmTestSupport_epoll_create()
            try #require(epoll >= 0)
            defer { close(epoll) }
            for descriptor in [wake, pair[0]] {
                try #require(CShmTestSupport_epoll_add_readable(epoll, descriptor) == 0)
            }
            var checker = Checker()
            var socketBytes = 0
            var ready = [Int32](repeating: 0, count: 4)
            var producerGone = false
            let deadline = ContinuousClock.now + .seconds(120)
            // The contract (RingConsumer.wakeEventDescriptor): poll until empty, arm, and on
            // `.ready` poll again.
            func drainRing() throws {
                while true {
                    while try consumer.poll(
                        limit: 256,
                        { bytes, info in
                            checker.check(bytes.withUnsafeBytes { [UInt8]($0) }, info)
                            return .continue
                        }) > 0
                    {}
                    switch try consumer.armWakeEvent() {
                    case .armed: return
                    case .ready: continue
                    case .producerGone:
                        producerGone = true
                        return
                    }
                }
            }
            try drainRing()
            while !(producerGone || checker.received == messages) || socketBytes < 200 {
                try #require(ContinuousClock.now < deadline, "the loop got \(checker.received) messages")
                let count = CShmTestSupport_epoll_wait(epoll, &ready, 4, 1000)
                for descriptor in ready.prefix(Int(max(count, 0))) {
                    if descriptor == wake {
                        consumer.acknowledgeWakeEvent()  // drains it, passes a wake on
                        try drainRing()
                    } else {
                        var buffer = [UInt8](repeating: 0, count: 64)
                        socketBytes += max(0, read(pair[0], &buffer, 64))
                    }
                }
            }
            #expect(checker.received == messages)
            #expect(checker.bad == 0)
            #expect(socketBytes == 200)
            consumer.detach()
            #expect(producer.wait(timeout: .seconds(60)) == .exited(0), "\(producer.standardError)")
            print("wake-up, epoll: \(checker.received) messages and \(socketBytes) socket bytes")
        }

        /// A consumer armed for an event loop and a blocking one sleep on the same ring; the
        /// producer wakes one of them per message (often the armed one, the oldest waiter), and
        /// the armed one passes the wake on in `acknowledgeWakeEvent()`: the blocking one never
        /// waits for its timeout.
        @Test func anArmedConsumerPassesTheWakeOn() throws {
            guard CShmLinux_uring_probe_futex_wait() == 1 else { return }  // no eventfd without io_uring
            let key = uniqueKey()
            let rounds = 50
            let producer = try RingProducer(key: key, configuration: RingConfiguration(capacity: 1 << 16))
            let armed = try RingConsumer(key: key)
            let wake = try armed.wakeEventDescriptor()
            #expect(try armed.armWakeEvent() == .armed)  // the first waiter in the kernel's queue
            // Its waits time out only after 10 minutes: a wake that nobody passes on shows as a
            // stall of the publisher below, not as a timeout.
            let blocking = try ChildProcess(
                TestPeer.forHeavyLoops,
                ["ring-wait-consume", "--key", key, "--count", "\(rounds)", "--timeout-ms", "600000"])
            // Publishes a message whenever both sleep and the last wake was passed on. A round
            // in which that does not happen within 30 s (a bound, not a timing) is a stall: the
            // wake landed on a consumer that did not pass it on. After a stall it publishes the
            // rest without waiting, so that both consumers finish.
            let stalls = Counter()
            nonisolated(unsafe) let publishing = producer
            let publisher = Thread {
                var message = [UInt8](repeating: 0, count: 64)
                for sequence in 0..<UInt64(rounds) {
                    let deadline = ContinuousClock.now + .seconds(30)
                    while stalls.value == 0 {
                        let doorbell = publishing.doorbellForTests
                        if doorbell.announced && doorbell.sleepers == 2 && !doorbell.passOnPending { break }
                        if ContinuousClock.now > deadline { stalls.add() }
                        usleep(200)
                    }
                    message.withUnsafeMutableBytes {
                        GeneratedMessage.write(sequence: sequence, timestamp: 0, into: $0)
                    }
                    _ = try? publishing.publish(message)
                }
            }
            publisher.start()
            let epoll = CShmTestSupport_epoll_create()
            try #require(epoll >= 0 && CShmTestSupport_epoll_add_readable(epoll, wake) == 0)
            defer { close(epoll) }
            var received = 0
            var handedOnLate = 0
            var ready: [Int32] = [0]
            let deadline = ContinuousClock.now + .seconds(300)
            while received < rounds && ContinuousClock.now < deadline {
                guard CShmTestSupport_epoll_wait(epoll, &ready, 1, 1000) == 1 else { continue }
                armed.acknowledgeWakeEvent()
                // Whoever the producer woke, the wake has been passed on by now: by this
                // consumer in acknowledgeWakeEvent(), or by the other before it woke this one.
                if producer.doorbellForTests.passOnPending { handedOnLate += 1 }
                while true {
                    received += try armed.poll { _, _ in .continue }
                    if try armed.armWakeEvent() != .ready { break }
                }
            }
            #expect(received == rounds)
            #expect(blocking.wait(timeout: .seconds(300)) == .exited(0), "\(blocking.standardError)")
            let results = blocking.results
            #expect(results["received"] == "\(rounds)", "\(results)")
            #expect(stalls.value == 0, "a wake was not passed on")
            #expect(handedOnLate == 0, "\(handedOnLate) wakes were passed on only after acknowledgeWakeEvent()")
            print("wake-up, armed and blocking: \(results)")
            armed.detach()
        }

        /// 16 consumers asleep (each its own process) all receive every message of bursts.
        @Test func sixteenSleepingConsumersAllReceiveABurst() throws {
            let key = uniqueKey()
            let (rounds, burst) = (5, 200)
            let producer = try ChildProcess(
                TestPeer.forHeavyLoops,
                ["ring-fan-out", "--key", key, "--consumers", "16", "--rounds", "\(rounds)", "--burst", "\(burst)"])
            try #require(producer.waitForReady("created"))
            let readers = try (0..<16).map { _ in
                try ChildProcess(
                    TestPeer.forHeavyLoops,
                    [
                        "ring-wait-consume", "--key", key, "--count", "\(rounds * burst)", "--timeout-ms", "10000",
                        "--burst", "\(burst)",
                    ])
            }
            for reader in readers {
                #expect(reader.wait(timeout: .seconds(300)) == .exited(0), "\(reader.standardError)")
                let results = reader.results
                #expect(results["received"] == "\(rounds * burst)", "\(results)")
                #expect(results["gaps"] == "0" && results["corrupted"] == "0", "\(results)")
                #expect(results["timeouts"] == "0", "a wait ran to its 10 s timeout: a lost wake-up? \(results)")
            }
            #expect(producer.wait(timeout: .seconds(120)) == .exited(0), "\(producer.standardError)")
            #expect(producer.results["not_asleep"] == "0", "\(producer.results)")
            print("wake-up, 16 sleepers: \(producer.results)")
        }
    }
}

/// A counter shared between tasks.
final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var count = 0
    var value: Int { lock.withLock { count } }
    func add() { lock.withLock { count += 1 } }
}
