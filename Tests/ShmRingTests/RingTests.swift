import CShmAtomics
import Testing

@testable import ShmRing

#if canImport(Glibc)
import Glibc
#endif

/// Polls everything available into `(sequence, bytes)` pairs.
func drain(_ consumer: RingConsumer, limit: Int = .max) throws -> [(UInt64, [UInt8])] {
    var out: [(UInt64, [UInt8])] = []
    try consumer.poll(limit: limit) { bytes, info in
        out.append((info.sequence, bytes.withUnsafeBytes { Array($0) }))
        return .continue
    }
    return out
}

@Suite struct RingTests {
    @Test func oneMessageIntoAnIdleRingArrives() throws {
        let key = uniqueKey()
        let producer = try RingProducer(key: key, configuration: RingConfiguration(capacity: 4096))
        let consumer = try RingConsumer(key: key)
        #expect(try drain(consumer).isEmpty)
        #expect(try producer.publish(Array("hello".utf8)) == .published)
        let got = try drain(consumer)
        #expect(got.count == 1)
        #expect(got.first?.0 == 0 && got.first?.1 == Array("hello".utf8))
        #expect(try drain(consumer).isEmpty)
    }

    @Test func messagesWrapWithPaddingAndKeepTheirOrder() throws {
        let key = uniqueKey()
        let producer = try RingProducer(key: key, configuration: RingConfiguration(capacity: 4096))
        let consumer = try RingConsumer(key: key)
        var expected: UInt64 = 0
        for round in 0..<2000 {
            let length = (round * 37) % 300
            let message = (0..<length).map { UInt8(truncatingIfNeeded: $0 &+ round) }
            var result = try producer.publish(message)
            if result == .backPressured {
                for (sequence, bytes) in try drain(consumer) {
                    #expect(sequence == expected)
                    expected += 1
                    _ = bytes
                }
                result = try producer.publish(message)
            }
            #expect(result == .published)
        }
        let rest = try drain(consumer)
        for (sequence, _) in rest {
            #expect(sequence == expected)
            expected += 1
        }
        #expect(expected == 2000)
    }
}
