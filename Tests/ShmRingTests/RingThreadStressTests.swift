import CShmAtomics
import Testing

@testable import ShmRing
import ShmRingTestSupport

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
        let consumers = try (0..<2).map { _ in Handoff(try RingConsumer(key: key, configuration: .init(start: .oldest)))
        }
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

    /// A producer thread at full speed, a lossy consumer thread and a gating consumer thread with
    /// a lag limit (demoted once it falls behind): every delivered message verifies, every gap is
    /// a reported loss, and delivered + missed = published. The lossy reads race with the producer
    /// by design; their copy is made of relaxed atomic loads (CShmAtomics_copy_racing). What
    /// ThreadSanitizer can check here is the process-private state (see docs/testing.md: it does
    /// not see accesses to the memfd mappings).
    @Test func lossyAndLagLimitedConsumerThreads() throws {
        let key = uniqueKey()
        let messages = 200_000
        let producer = Handoff(try RingProducer(key: key, configuration: RingConfiguration(capacity: 16384)))
        let consumers = [
            Handoff(try RingConsumer(key: key, configuration: .init(policy: .lossy))),
            Handoff(try RingConsumer(key: key, configuration: .init(lagLimit: LagLimit(bytes: 4096)))),
        ]
        // delivered, lapped, unreported gaps, corrupted, unexpected errors, demotions
        let results = consumers.map { _ in Handoff(UnsafeMutablePointer<Int>.allocate(capacity: 6)) }
        defer { for result in results { result.value.deallocate() } }
        let readers = try zip(consumers, results).map { consumer, result in
            try startThread {
                var counts = [0, 0, 0, 0, 0, 0]
                var expected: UInt64 = 0
                let deadline = ContinuousClock.now + .seconds(300)
                while consumer.value.nextSequence < UInt64(messages) && ContinuousClock.now < deadline {
                    do {
                        let got = try consumer.value.poll(limit: 1000) { bytes, info in
                            if info.sequence &- expected != info.missedMessages { counts[2] += 1 }
                            expected = info.sequence + 1
                            let check = bytes.withUnsafeBytes { GeneratedMessage.check($0) }
                            if case .valid(let sequence, _) = check, sequence == info.sequence {
                            } else {
                                counts[3] += 1
                            }
                            return .continue
                        }
                        // Fall behind now and then (the lag-limited one gets demoted).
                        if got > 0 && consumer.value.delivered % 5000 < UInt64(got) { usleep(200) }
                        if got == 0 { sched_yield() }
                    } catch let error as RingError where error.code == .demoted {
                        counts[5] += 1
                    } catch let error as RingError where error.code == .cannotKeepUp {
                        continue
                    } catch {
                        counts[4] += 1
                        break
                    }
                }
                counts[0] = Int(consumer.value.delivered)
                counts[1] = Int(consumer.value.lappedMessages)
                for index in 0..<6 { result.value[index] = counts[index] }
            }
        }
        let writer = try startThread {
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 512, alignment: 16)
            defer { buffer.deallocate() }
            for sequence in 0..<UInt64(messages) {
                let message = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<(24 + Int(sequence % 400))])
                GeneratedMessage.write(sequence: sequence, timestamp: 0, into: message)
                // Until the lag-limited consumer is demoted it may hold the producer back.
                while (try? producer.value.publish(UnsafeRawBufferPointer(message))) == .backPressured {
                    sched_yield()
                }
            }
        }
        pthread_join(writer, nil)
        for reader in readers { pthread_join(reader, nil) }
        for (index, result) in results.enumerated() {
            let counts = (0..<6).map { result.value[$0] }
            #expect(counts[4] == 0, "consumer \(index): an unexpected error")
            #expect(counts[0] + counts[1] == messages, "consumer \(index): delivered + missed = published: \(counts)")
            #expect(counts[2] == 0, "consumer \(index): gaps not reported as losses")
            #expect(counts[3] == 0, "consumer \(index): corrupted")
        }
        print(
            "lossy thread stress: \(messages) published; lossy delivered \(results[0].value[0]), missed "
                + "\(results[0].value[1]); lag-limited delivered \(results[1].value[0]), missed \(results[1].value[1]), "
                + "demoted \(results[1].value[5]) times")
    }
}
