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
}
