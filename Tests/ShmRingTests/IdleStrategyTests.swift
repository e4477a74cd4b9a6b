import Testing

@testable import ShmRing

@Suite struct IdleStrategyTests {
    @Test func backoffSleepsLongerTheLongerNothingComes() {
        let backoff = IdleStrategy.backoff
        #expect(backoff.spins == 64 && backoff.yields == 64)
        #expect(backoff.sleepNanoseconds(round: 0) == 50_000)
        #expect(backoff.sleepNanoseconds(round: 63) == 50_000)
        #expect(backoff.sleepNanoseconds(round: 64) == 100_000)
        #expect(backoff.sleepNanoseconds(round: 4 * 64) == 800_000)
        #expect(backoff.sleepNanoseconds(round: 5 * 64) == 1_000_000, "capped at the maximum")
        #expect(backoff.sleepNanoseconds(round: .max) == 1_000_000, "no overflow")
    }

    @Test func roundsCountAndNeverOverflow() {
        var rounds = 0
        IdleStrategy.spin.idle(&rounds)
        IdleStrategy.spin.idle(&rounds)
        #expect(rounds == 2)
        rounds = .max
        IdleStrategy.spin.idle(&rounds)
        #expect(rounds == .max)
    }

    @Test func valuesOutOfRangeAreClamped() {
        let odd = IdleStrategy(spins: -3, yields: -1, minimumSleep: .zero, maximumSleep: .seconds(-1))
        #expect(odd.spins == 0 && odd.yields == 0)
        #expect(odd.minimumSleep == .microseconds(1) && odd.maximumSleep == .microseconds(1))
        let huge = IdleStrategy(spins: 0, minimumSleep: .seconds(1_000_000_000_000), maximumSleep: .seconds(Int64.max))
        #expect(huge.sleepNanoseconds(round: 64 * 100) == Int64.max)
        #expect("\(IdleStrategy.backoff)" == "backoff" && "\(IdleStrategy.spin)" == "spin")
    }

    /// `block` spins for a budget measured here (a wake-up's cost in pauses), then blocks; alone
    /// (without a consumer) its last stage is a short sleep.
    @Test func blockSpinsACalibratedBudgetThenBlocks() {
        let (wake, pause) = Calibration.measured
        #expect(wake > 0 && pause > 0, "wake \(wake) ns, pause \(pause) ps")
        let block = IdleStrategy.block(timeout: .milliseconds(20))
        #expect(block.spins == IdleStrategy.calibratedSpins && (64...(1 << 20)).contains(block.spins))
        #expect(block.blockTimeout == .milliseconds(20) && block.yields == 0)
        #expect("\(block)".contains("block"))
        var rounds = block.spins
        block.idle(&rounds)  // no consumer: a short sleep, no crash
        #expect(rounds == block.spins + 1)
        print("idle: a wake-up costs \(wake) ns here, a pause \(pause) ps: \(block.spins) spins before blocking")
    }

    /// Through a consumer, `block` waits: it times out while nothing comes, and returns at once
    /// when a message is there; spinning rounds come first.
    @Test func aConsumerBlocksOnceTheSpinsAreUsedUp() throws {
        let key = uniqueKey()
        let producer = try RingProducer(key: key, configuration: RingConfiguration(capacity: 1 << 16))
        let consumer = try RingConsumer(key: key)
        let block = IdleStrategy.block(timeout: .milliseconds(20))
        var rounds = 0
        #expect(try consumer.idle(using: block, rounds: &rounds) == nil, "the first round spins")
        #expect(rounds == 1)
        rounds = block.spins
        #expect(try consumer.idle(using: block, rounds: &rounds) == .timedOut)
        try producer.publish([UInt8](repeating: 1, count: 8))
        #expect(try consumer.idle(using: block, rounds: &rounds) == .ready)
        #expect(try consumer.poll { _, _ in .continue } == 1)
        #expect(consumer.sleeps == 1 && consumer.announcedWaits == 1)
    }
}
