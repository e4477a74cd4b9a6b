import Foundation
import ShmRing
import Testing

/// The example of README.md and docs/shared-memory.md, as written there (both "processes" in one
/// here; SharedMemoryAcrossProcessesTests does it across processes). If it stops compiling or
/// working, the documents are wrong.
@Suite struct DocumentationExampleTests {
    @Test func theSharedMemoryExample() throws {
        let key = uniqueKey()

        // Process A: creates 4 KiB under a key and writes under the lock.
        let memory = SharedMemory(key: key)
        try memory.create(size: 4096)
        try memory.withLock { _ in
            try memory.withUnsafeMutableBytes { $0.storeBytes(of: 101.25, as: Double.self) }
        }

        // Process B (same user): attaches by the key and reads.
        let view = SharedMemory(key: key)
        try view.attach(mode: .readOnly)
        let price = try view.withLock { _ in try view.withUnsafeBytes { $0.load(as: Double.self) } }

        #expect(price == 101.25)
    }

    @Test func theLossyExample() throws {
        let key = uniqueKey()
        let producer = try RingProducer(key: key, configuration: RingConfiguration(capacity: 4096))
        let dashboard = try RingConsumer(key: key, configuration: .init(policy: .lossy))
        for price in 0..<1000 { try producer.publish([UInt8(truncatingIfNeeded: price)]) }
        var missed: UInt64 = 0
        var delivered: UInt64 = 0
        try dashboard.poll { bytes, info in  // a validated copy: never torn data
            if info.missedMessages > 0 { missed += info.missedMessages }
            delivered += 1
            return .continue
        }
        #expect(missed > 0 && missed + delivered == 1000)
    }

    @Test func theRingExample() throws {
        let key = uniqueKey()

        // Process A: the producer creates a 1 MiB ring under a key and publishes.
        let producer = try RingProducer(key: key, configuration: RingConfiguration(capacity: 1 << 20))
        try producer.publish(Array("hello".utf8))  // visible at once
        try producer.batch { ring in  // or many, visible together
            for price in [101, 102, 103] as [UInt8] { try ring.publish([price]) }
        }

        // Process B: a consumer attaches by the key (same credential checks) and polls.
        let consumer = try RingConsumer(key: key, configuration: .init(start: .oldest))
        var sizes: [Int] = []
        try consumer.poll { bytes, info in  // bytes: a RawSpan that cannot escape
            sizes.append(bytes.byteCount)
            return .continue
        }
        #expect(sizes == [5, 1, 1, 1])
    }

    /// README.md's blocking consumer, as written there (the producer publishes from another
    /// thread, whenever it runs, and then closes).
    @Test func theBlockingExample() throws {
        let key = uniqueKey()
        let producer = try RingProducer(key: key)
        let consumer = try RingConsumer(key: key)
        let started = ContinuousClock.now
        nonisolated(unsafe) let publishing = producer
        let publisher = Thread {
            _ = try? publishing.publish([1, 2, 3])
            publishing.close()  // the consumer's loop ends once it read everything
        }
        publisher.start()
        var received: [Int] = []
        func handle(_ bytes: RawSpan) { received.append(bytes.byteCount) }

        var rounds = 0
        do {
            while true {
                let read = try consumer.poll { bytes, _ in
                    handle(bytes)
                    return .continue
                }
                if read > 0 {
                    rounds = 0
                } else if try consumer.idle(using: .block(), rounds: &rounds) == .producerGone {
                    break  // the producer is gone, and every message it committed was read
                }
            }
        } catch {
            // `poll` says the same (a consumer that only polls learns it so); anything else is a failure
            guard error.code == .producerGone else { throw error }
        }
        #expect(received == [3])
        #expect(ContinuousClock.now - started < .seconds(60), "a bound, not a timing")
    }

    /// README.md's `AsyncSequence`, as written there: the producer publishes two messages from
    /// another thread and then goes; the iteration ends by itself.
    @Test func theAsyncSequenceExample() async throws {
        let key = uniqueKey()
        nonisolated(unsafe) var producer: RingProducer? = try RingProducer(key: key)
        let consumer = try RingConsumer(key: key)
        let publisher = Thread {
            _ = try? producer?.publish([1, 2, 3])
            _ = try? producer?.publish([4, 5])
            producer?.close()
            producer = nil
        }
        publisher.start()
        nonisolated(unsafe) let reading = consumer
        let iteration = Task {
            var received: [[UInt8]] = []
            func handle(_ bytes: [UInt8]) { received.append(bytes) }

            for try await message in reading.messages() {
                handle(message.bytes)
            }
            return received
        }
        // A bound, not a timing: a watchdog ends the iteration if the producer's end is missed.
        let watchdog = Task {
            try await Task.sleep(for: .seconds(60))
            iteration.cancel()
        }
        #expect(try await iteration.value == [[1, 2, 3], [4, 5]])
        watchdog.cancel()
    }
}
