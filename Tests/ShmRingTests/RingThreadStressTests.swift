import CShmAtomics
import Testing

@testable import ShmRing

#if canImport(Glibc)
import Glibc
#endif

/// Hands a non-Sendable object to one other thread, which becomes its only user.
final class Handoff<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}

/// The ring with a producer thread and two consumer threads in one process: what ThreadSanitizer
/// checks (scripts/test runs this suite with `--sanitize=thread` and TSAN_OPTIONS=halt_on_error=1).
@Suite struct RingThreadStressTests {
    @Test func aProducerThreadAndTwoConsumerThreads() throws {
        let key = uniqueKey()
        let messages = 100_000
        let producer = Handoff(try RingProducer(key: key, configuration: RingConfiguration(capacity: 16384)))
        let consumers = try (0..<2).map { _ in Handoff(try RingConsumer(key: key, from: .oldest)) }
        let results = consumers.map { _ in Handoff(UnsafeMutablePointer<Int>.allocate(capacity: 4)) }
        defer { for result in results { result.value.deallocate() } }
        let readers = try zip(consumers, results).map { consumer, result in
            try startThread {
                var received = 0
                var gaps = 0
                var corrupted = 0
                var expected: UInt64 = 0
                var failed = 0
                let deadline = ContinuousClock.now + .seconds(300)
                while received < messages && ContinuousClock.now < deadline {
                    let got: Int
                    do {
                        got = try consumer.value.poll { bytes, info in
                            if info.sequence != expected { gaps += 1 }
                            expected = info.sequence + 1
                            let check = bytes.withUnsafeBytes { GeneratedMessage.check($0) }
                            if case .valid(let sequence, _) = check, sequence == info.sequence {
                            } else {
                                corrupted += 1
                            }
                            return .continue
                        }
                    } catch {
                        failed = 1
                        break
                    }
                    received += got
                    if got == 0 { sched_yield() }
                }
                result.value[0] = received
                result.value[1] = gaps
                result.value[2] = corrupted
                result.value[3] = failed
            }
        }
        let writerFailed = Handoff(UnsafeMutablePointer<Int>.allocate(capacity: 1))
        writerFailed.value.initialize(to: 0)
        defer { writerFailed.value.deallocate() }
        let writer = try startThread {
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 512, alignment: 16)
            defer { buffer.deallocate() }
            let deadline = ContinuousClock.now + .seconds(300)
            for sequence in 0..<UInt64(messages) {
                let message = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<(24 + Int(sequence % 400))])
                GeneratedMessage.write(sequence: sequence, timestamp: 0, into: message)
                while true {
                    do {
                        if try producer.value.publish(UnsafeRawBufferPointer(message)) == .published { break }
                    } catch {
                        writerFailed.value.pointee = 1
                        return
                    }
                    if ContinuousClock.now > deadline {
                        writerFailed.value.pointee = 2
                        return
                    }
                    sched_yield()
                }
            }
        }
        pthread_join(writer, nil)
        for reader in readers { pthread_join(reader, nil) }
        #expect(writerFailed.value.pointee == 0, "the writer threw (1) or ran out of time (2)")
        for result in results {
            #expect(result.value[3] == 0, "a poll threw")
            #expect(result.value[0] == messages)
            #expect(result.value[1] == 0, "gaps")
            #expect(result.value[2] == 0, "corrupted")
        }
    }
}
