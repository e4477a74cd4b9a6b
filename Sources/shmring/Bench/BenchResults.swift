import Histogram

/// Every run's outcome, and the rows they add up to: histograms merged over the rounds,
/// throughputs as medians, and each system's ratio to ShmRing taken within each round.
struct BenchResults {
    let groups: [[BenchCase]]
    let rounds: Int
    var outcomes: [BenchCase: [BenchOutcome?]] = [:]

    init(groups: [[BenchCase]], rounds: Int) {
        self.groups = groups
        self.rounds = rounds
    }

    mutating func record(_ item: BenchCase, round: Int, _ outcome: BenchOutcome) {
        outcomes[item, default: Array(repeating: nil, count: rounds)][round] = outcome
    }

    struct Row {
        var item: BenchCase
        var latencies: Histogram<UInt64>?
        var messagesPerSecond: Double?
        var deliveriesPerSecond: Double?
        var sleptShare: Double?
        var failure: String?
        /// How many times better ShmRing did than this row, one per round where both ran.
        var advantages: [Double] = []
        var succeeded = 0
        /// Rounds that filled their sample space before their duration ended.
        var capped = 0
    }

    /// ShmRing's advantage over `other` in one round: a throughput ratio, or the ratio of the
    /// medians of latency (above 1: ShmRing is better).
    static func advantage(_ scenario: BenchScenario, _ shmring: BenchOutcome, _ other: BenchOutcome) -> Double? {
        switch scenario {
        case .throughput:
            guard let a = shmring.messagesPerSecond, let b = other.messagesPerSecond, b > 0 else { return nil }
            return a / b
        case .fanout:
            guard let a = shmring.deliveriesPerSecond, let b = other.deliveriesPerSecond, b > 0 else { return nil }
            return a / b
        default:
            // Only medians that the table shows (200 samples or more on each side).
            guard let a = shmring.latencies, let b = other.latencies,
                BenchFormat.shown(50, of: a.totalCount) && BenchFormat.shown(50, of: b.totalCount),
                a.valueAtPercentile(50) > 0
            else { return nil }
            return Double(b.valueAtPercentile(50)) / Double(a.valueAtPercentile(50))
        }
    }

    var rows: [Row] {
        groups.flatMap { $0 }.map { item in
            var row = Row(item: item)
            let runs = outcomes[item] ?? []
            let references = outcomes[item.reference] ?? []
            var throughputs: [Double] = []
            var deliveries: [Double] = []
            var slept: [Double] = []
            for (round, run) in runs.enumerated() {
                guard let run else { continue }
                if let failure = run.failure {
                    row.failure = row.failure ?? failure
                    continue
                }
                row.succeeded += 1
                if run.capped { row.capped += 1 }
                if let histogram = run.latencies {
                    if row.latencies == nil { row.latencies = histogram } else { row.latencies!.add(histogram) }
                }
                if let value = run.messagesPerSecond { throughputs.append(value) }
                if let value = run.deliveriesPerSecond { deliveries.append(value) }
                if let value = run.sleptShare { slept.append(value) }
                if round < references.count, let reference = references[round], reference.failure == nil,
                    let advantage = Self.advantage(item.scenario, reference, run)
                {
                    row.advantages.append(advantage)
                }
            }
            row.messagesPerSecond = BenchFormat.median(throughputs)
            row.deliveriesPerSecond = BenchFormat.median(deliveries)
            row.sleptShare = slept.isEmpty ? nil : slept.reduce(0, +) / Double(slept.count)
            return row
        }
    }

    /// A run of ShmRing or of a built-in baseline failed (a peer's failure is a finding).
    var failedBuiltIn: Bool {
        outcomes.contains { item, runs in !item.system.isPeer && runs.contains { $0?.failure != nil } }
    }
}

/// Number formats of the table and the plot.
enum BenchFormat {
    static func median(_ values: [Double]) -> Double? {
        guard !values.isEmpty else { return nil }
        let sorted = values.sorted()
        return sorted.count % 2 == 1
            ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
    }

    static func fixed(_ value: Double, _ digits: Int) -> String {
        guard value.isFinite else { return "-" }
        var scale = 1.0
        for _ in 0..<digits { scale *= 10 }
        let rounded = (abs(value) * scale).rounded()
        let whole = Int(rounded / scale)
        var text = (value < 0 ? "-" : "") + String(whole)
        if digits > 0 {
            let fraction = String(Int(rounded) - whole * Int(scale))
            text += "." + String(repeating: "0", count: digits - fraction.count) + fraction
        }
        return text
    }

    /// 1.23 M, 45.6 k, 789.
    static func count(_ value: Double) -> String {
        // (Thresholds just below each unit, so that 999 999.6 prints as 1M, not 1000k.)
        if value >= 999_500_000 { return trimmed(value / 1e9) + "G" }
        if value >= 999_500 { return trimmed(value / 1e6) + "M" }
        if value >= 999.5 { return trimmed(value / 1e3) + "k" }
        return trimmed(value)
    }

    static func trimmed(_ value: Double) -> String {
        var text = fixed(value, value >= 100 ? 0 : value >= 10 ? 1 : 2)
        if text.contains(".") {
            while text.hasSuffix("0") { text.removeLast() }
            if text.hasSuffix(".") { text.removeLast() }
        }
        return text
    }

    /// 10k, 2.5M, 100: the rates of --rates.
    static func parseCount(_ text: String) -> Int? {
        let units: [(String, Double)] = [("k", 1e3), ("K", 1e3), ("M", 1e6), ("m", 1e6)]
        for (suffix, scale) in units where text.hasSuffix(suffix) {
            guard let value = Double(text.dropLast()), value.isFinite, value > 0 else { return nil }
            return Int(exactly: (value * scale).rounded())
        }
        return Int(text)
    }

    /// 95 ns, 1.23 µs, 45.6 ms.
    static func nanoseconds(_ value: UInt64) -> String {
        let v = Double(value)
        if v >= 1e9 { return trimmed(v / 1e9) + " s" }
        if v >= 1e6 { return trimmed(v / 1e6) + " ms" }
        if v >= 1e3 { return trimmed(v / 1e3) + " µs" }
        return "\(value) ns"
    }

    static func percent(_ fraction: Double) -> String { fixed(fraction * 100, fraction < 0.01 ? 3 : 1) + " %" }

    /// The percentiles a table or JSON shows: only those with at least 100 samples beyond.
    static let percentiles: [(key: String, label: String, value: Double)] = [
        ("p50", "p50", 50), ("p90", "p90", 90), ("p99", "p99", 99), ("p999", "p99.9", 99.9),
        ("p9999", "p99.99", 99.99),
    ]

    /// Whether at least 100 of `count` samples lie beyond `percentile`, in whole numbers (the
    /// share beyond p99.9 is 1/1000: 100 000 samples are enough).
    static func shown(_ percentile: Double, of count: UInt64) -> Bool {
        let denominator = UInt64((100 / (100 - percentile)).rounded())
        return count >= 100 * denominator
    }
}
