import CShmAtomics
import CShmLinux

#if canImport(Glibc)
import Glibc
#endif

/// How a loop that found nothing to do waits before it tries again: a consumer with no message,
/// a producer with a full ring.
///
/// It spins (a pause instruction) `spins` times, then yields the CPU (`sched_yield`) `yields`
/// times, then sleeps: `minimumSleep` first, twice as long after every 64 sleeps in a row, at most
/// `maximumSleep`. The caller counts the rounds in a row and resets the count when work arrives:
///
/// ```swift
/// var rounds = 0
/// while running {
///     if try consumer.poll(handle) > 0 { rounds = 0 } else { strategy.idle(&rounds) }
/// }
/// ```
///
/// Spinning gives the lowest latency and burns a CPU; sleeping costs a timer wake-up (20–45 µs
/// here, more under load) on the first message after a sleep. `block` spins for about one wake-up's
/// cost (calibrated once per process), then blocks until the producer wakes the consumer
/// (`RingConsumer.idle(using:rounds:)`, docs/wakeup.md): a wake-up's latency, no CPU while idle.
public struct IdleStrategy: Sendable, Hashable, CustomStringConvertible {
    /// Rounds of a pause instruction first.
    public var spins: Int
    /// Then rounds of `sched_yield`.
    public var yields: Int
    /// Then sleeps, from this long ...
    public var minimumSleep: Duration
    /// ... doubling every 64 sleeps, up to this long.
    public var maximumSleep: Duration
    /// Block instead of sleeping, each wait at most this long (nil: sleep). Blocking needs the
    /// ring (`RingConsumer.idle(using:rounds:)`, `RingProducer.idle(using:rounds:)`); `idle(_:)`
    /// alone sleeps `minimumSleep` then.
    public var blockTimeout: Duration?

    public init(
        spins: Int, yields: Int = 0, minimumSleep: Duration = .microseconds(50),
        maximumSleep: Duration = .milliseconds(1)
    ) {
        self.spins = max(0, spins)
        self.yields = max(0, yields)
        self.minimumSleep = max(.microseconds(1), minimumSleep)
        self.maximumSleep = max(self.minimumSleep, maximumSleep)
    }

    /// Spin for ever: the lowest latency, a whole CPU.
    public static var spin: IdleStrategy { IdleStrategy(spins: .max) }
    /// Yield the CPU every round: other threads run, the CPU stays busy when nobody else wants it.
    public static var yield: IdleStrategy { IdleStrategy(spins: 0, yields: .max) }
    /// Spin a little, then yield for ever: for processes that share a CPU with their peer.
    public static var spinThenYield: IdleStrategy { IdleStrategy(spins: 64, yields: .max) }
    /// Spin 64 rounds, yield 64, then sleep from 50 µs up to 1 ms: little CPU when idle, a sleep's
    /// wake-up on the first message after a quiet spell.
    public static var backoff: IdleStrategy { IdleStrategy(spins: 64, yields: 64) }

    /// Spin for about one wake-up's cost (`calibratedSpins`), then block until the producer
    /// publishes, each wait at most `timeout` (after which the caller polls and may block again).
    /// A spin budget of one wake-up's cost is never worse than twice the best choice made
    /// knowing the future (the ski-rental argument).
    public static func block(timeout: Duration = .seconds(1)) -> IdleStrategy {
        var strategy = IdleStrategy(spins: calibratedSpins)
        strategy.blockTimeout = max(.microseconds(1), timeout)
        return strategy
    }

    /// The longest wait of the block stage, once `rounds` idle rounds have used up the spins and
    /// yields before it; nil before that, or for a strategy that does not block (then `idle`).
    func blockTimeout(after rounds: Int) -> Duration? {
        guard let blockTimeout, rounds >= spins &+ yields else { return nil }
        return blockTimeout
    }

    /// Pause instructions that take about as long as one wake-up here: measured once per process
    /// (a futex ping-pong between two threads, 100 rounds, and the time of a pause), at the first
    /// use. 64 ... 1 048 576.
    public static var calibratedSpins: Int { Calibration.spins }

    /// Waits once. `rounds` counts the idle rounds in a row: this increments it; set it to 0 when
    /// work arrives.
    @inlinable
    public func idle(_ rounds: inout Int) {
        let round = rounds
        rounds = round == .max ? round : round + 1
        if round < spins {
            CShmAtomics_pause()
        } else if round - spins < yields {
            sched_yield()
        } else if blockTimeout != nil {
            // Blocking needs a consumer (RingConsumer.idle(using:rounds:)); alone, sleep briefly.
            sleep(round: 0)
        } else {
            sleep(round: round - spins - yields)
        }
    }

    /// The `sleeps`th sleep in a row (counted from 0).
    @usableFromInline
    func sleep(round sleeps: Int) {
        let nanoseconds = sleepNanoseconds(round: sleeps)
        var time = timespec(tv_sec: Int(nanoseconds / 1_000_000_000), tv_nsec: Int(nanoseconds % 1_000_000_000))
        _ = nanosleep(&time, nil)
    }

    /// How long the `sleeps`th sleep in a row lasts (counted from 0), in nanoseconds.
    func sleepNanoseconds(round sleeps: Int) -> Int64 {
        let doublings = Int64(min(sleeps / 64, 62))
        let (first, cap) = (minimumSleep.clampedNanoseconds, maximumSleep.clampedNanoseconds)
        return first > cap >> doublings ? cap : first << doublings
    }

    public var description: String {
        if let blockTimeout { return "spin \(spins), yield \(yields), block \(blockTimeout) at a time" }
        switch self {
        case .spin: return "spin"
        case .yield: return "yield"
        case .spinThenYield: return "spin-then-yield"
        case .backoff: return "backoff"
        default: return "spin \(spins), yield \(yields), sleep \(minimumSleep) ... \(maximumSleep)"
        }
    }
}

/// The spin budget before blocking, measured once per process.
enum Calibration {
    /// The median cost of one wake-up here (nanoseconds), and of one pause (picoseconds).
    static let measured: (wakeNanoseconds: Int64, pausePicoseconds: Int64) = (
        CShmLinux_measure_wake_ns(100), pausePicoseconds(count: 100_000)
    )

    /// The time of one `CShmAtomics_pause` (the instruction the spins execute), in picoseconds.
    static func pausePicoseconds(count: Int) -> Int64 {
        let start = ContinuousClock.now
        for _ in 0..<count { CShmAtomics_pause() }
        return (ContinuousClock.now - start).clampedNanoseconds * 1000 / Int64(count)
    }

    static let spins: Int = {
        let (wake, pause) = measured
        guard wake > 0, pause > 0 else { return 4096 }
        return Int(min(max(wake * 1000 / pause, 64), 1 << 20))
    }()
}
