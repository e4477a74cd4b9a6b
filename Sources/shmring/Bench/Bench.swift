import ArgumentParser
import CShmBench
import Histogram

#if canImport(Glibc)
import Glibc
#endif

/// `shmring bench`: ShmRing against the floors and the usual alternatives, in one run, with the
/// baselines measured next to it (docs/benchmarking.md).
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure ShmRing against C floors, kernel primitives and (with --peers) other libraries, here.",
        discussion: """
            Each scenario runs ShmRing and its baselines as real processes pinned to two CPUs, in rounds: \
            every round runs each system once, in alternating order, and each ratio is taken within a \
            round. Latencies come from the TSC, calibrated against CLOCK_MONOTONIC_RAW at start-up, in HDR \
            histograms; a percentile is shown only when at least 100 samples lie beyond it. The `latency` \
            scenario sends at fixed rates and measures from each message's intended send time, so a stall \
            or back-pressure counts as latency. Build in release for meaningful numbers.
            """)

    @Option(help: "Scenarios, comma-separated: \(BenchScenario.allCases.map(\.rawValue).joined(separator: ", ")).")
    var scenarios = BenchScenario.allCases.map(\.rawValue).joined(separator: ",")

    @Option(
        help:
            "Systems, comma-separated (default: shmring and every built-in baseline, and the built peers with --peers)."
    )
    var systems: String?

    @Flag(help: "Also run the peers that perf/peers/build.sh builds: boost-mq, zeromq, qt-shm, iceoryx.")
    var peers = false

    @Option(help: "Message size in bytes (\(CSHMBENCH_MIN_SIZE) ... \(CSHMBENCH_MAX_SIZE)).")
    var size = 64

    @Option(help: "Sleeping consumers in the fanout scenario (1 ... \(CSHMBENCH_MAX_CONSUMERS)).")
    var consumers = 4

    @Option(help: "How long each run measures: 300ms, 2s, ... (10ms ... 600s).")
    var duration = BenchDuration(nanoseconds: 300_000_000)

    @Option(help: "The latency scenario's rates, comma-separated messages per second (10k, 1M, ...).")
    var rates = "10k,100k,1M"

    @Option(name: .customLong("repeat"), help: "Rounds; ratios are medians over them (1 ... 100).")
    var rounds = 3

    @Option(help: "Also measure throughput in batches of N messages (ShmRing and the C rings), in rows of their own.")
    var batch: Int?

    @Option(help: "The two CPUs to pin to: the producer's and the consumers'.")
    var cpus = "0,1"

    @Option(help: "Write the results as JSON to this file.")
    var json: String?

    @Option(help: "Write the percentile plot (SVG) to this file.")
    var plot = "shmring-bench.svg"

    @Flag(help: "Write no plot.")
    var noPlot = false

    @Option(help: "Where perf/peers/build.sh put the peers' programs.")
    var peersDirectory = "perf/peers/bin"

    /// A fault for tests: the latency scenario's producer sleeps this long once, halfway.
    @Option(help: .hidden)
    var stallMs = 0

    // Parsed by validate().
    var chosenScenarios: [BenchScenario] = []
    var chosenSystems: [BenchSystem] = []
    var chosenRates: [Int] = []
    var chosenCPUs: (Int32, Int32) = (0, 1)

    enum CodingKeys: String, CodingKey {
        case scenarios, systems, peers, size, consumers, duration, rates, rounds, batch, cpus, json, plot, noPlot
        case peersDirectory, stallMs
    }

    mutating func validate() throws {
        chosenScenarios = try Self.names(scenarios, "scenario", BenchScenario.allCases.map(\.rawValue)).map {
            BenchScenario(rawValue: $0)!
        }
        let valid = BenchSystem.allCases.map(\.rawValue)
        if let systems {
            chosenSystems = try Self.names(systems, "system", valid).map { BenchSystem(rawValue: $0)! }
        } else {
            chosenSystems = BenchSystem.builtIn + (peers ? BenchSystem.peers : [])
        }
        if !chosenSystems.contains(.shmring) { chosenSystems.insert(.shmring, at: 0) }
        guard size >= CSHMBENCH_MIN_SIZE, size <= CSHMBENCH_MAX_SIZE else {
            throw ValidationError(
                "--size \(size) is out of range: \(CSHMBENCH_MIN_SIZE) ... \(CSHMBENCH_MAX_SIZE) bytes")
        }
        guard consumers >= 1, consumers <= CSHMBENCH_MAX_CONSUMERS else {
            throw ValidationError("--consumers \(consumers) is out of range: 1 ... \(CSHMBENCH_MAX_CONSUMERS)")
        }
        guard duration.nanoseconds >= 10_000_000, duration.nanoseconds <= 600_000_000_000 else {
            throw ValidationError("--duration \(duration) is out of range: 10ms ... 600s")
        }
        chosenRates = []
        for text in rates.split(separator: ",", omittingEmptySubsequences: false) {
            guard let rate = BenchFormat.parseCount(String(text)), rate >= 1, rate <= 20_000_000 else {
                throw ValidationError("--rates: '\(text)' is not a rate of 1 ... 20M messages per second")
            }
            if !chosenRates.contains(rate) { chosenRates.append(rate) }
        }
        let latencySamples = Double(chosenRates.max() ?? 0) * Double(duration.nanoseconds) / 1e9
        guard !chosenScenarios.contains(.latency) || latencySamples <= 50_000_000 else {
            throw ValidationError(
                "--rates and --duration ask for \(Int(latencySamples)) latency samples a run; at most 50M")
        }
        guard rounds >= 1, rounds <= 100 else { throw ValidationError("--repeat \(rounds) is out of range: 1 ... 100") }
        if let batch, batch < 2 || batch > 4096 {
            throw ValidationError("--batch \(batch) is out of range: 2 ... 4096")
        }
        let cpuList = cpus.split(separator: ",").map { Int32($0) }
        guard cpuList.count == 2, let a = cpuList[0], let b = cpuList[1], a != b,
            CShmBench_cpu_allowed(a) == 1, CShmBench_cpu_allowed(b) == 1
        else {
            throw ValidationError("--cpus \(cpus): two different CPUs this process may run on, e.g. 0,1")
        }
        chosenCPUs = (a, b)
        guard stallMs >= 0, stallMs <= 10_000 else { throw ValidationError("--stall-ms \(stallMs): 0 ... 10000") }
        if let json { try Self.checkWritable(json, "--json") }
        if !noPlot { try Self.checkWritable(plot, "--plot") }
        let askedPeers = chosenSystems.filter(\.isPeer)
        if !askedPeers.isEmpty {
            let built = askedPeers.filter { access(peersDirectory + "/" + $0.rawValue, X_OK) == 0 }
            if built.isEmpty {
                throw ValidationError(
                    "no peer is built in \(peersDirectory): run perf/peers/build.sh (it installs what it needs and builds boost-mq, zeromq, qt-shm, iceoryx)"
                )
            }
            if systems != nil, let missing = askedPeers.first(where: { !built.contains($0) }) {
                throw ValidationError(
                    "\(missing.rawValue) is not built in \(peersDirectory): run perf/peers/build.sh \(missing.rawValue)"
                )
            }
            chosenSystems.removeAll { $0.isPeer && !built.contains($0) }
        }
    }

    static func names(_ list: String, _ what: String, _ valid: [String]) throws -> [String] {
        var result: [String] = []
        for name in list.split(separator: ",", omittingEmptySubsequences: false).map(String.init) {
            guard valid.contains(name) else {
                throw ValidationError("unknown \(what) '\(name)'; valid: \(valid.joined(separator: ", "))")
            }
            if !result.contains(name) { result.append(name) }
        }
        return result
    }

    /// Opens `path` for writing (creating it, and removing it again if it was not there): the
    /// same checks as the write at the end, before anything runs.
    static func checkWritable(_ path: String, _ option: String) throws {
        var info = stat()
        let existed = stat(path, &info) == 0
        if existed && info.st_mode & S_IFMT != S_IFREG {
            throw ValidationError("\(option) \(path) cannot be written: not a regular file")
        }
        let fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw ValidationError("\(option) \(path) cannot be written: \(String(cString: strerror(errno)))")
        }
        close(fd)
        if !existed { unlink(path) }
    }

    /// The rows of one round, in the order they run (ShmRing first in each group).
    func plan() -> [[BenchCase]] {
        var groups: [[BenchCase]] = []
        for scenario in chosenScenarios {
            var variants: [BenchCase] = []
            let base = BenchCase(system: .shmring, scenario: scenario, size: size)
            switch scenario {
            case .latency:
                variants = chosenRates.map {
                    var c = base; c.rate = $0; return c
                }
            case .fanout:
                variants = [
                    {
                        var c = base; c.consumers = consumers; return c
                    }()
                ]
            case .throughput:
                variants =
                    [base]
                    + (batch.map { b in
                        [
                            {
                                var c = base; c.batch = b; return c
                            }()
                        ]
                    } ?? [])
            default: variants = [base]
            }
            for variant in variants {
                groups.append(
                    chosenSystems.filter { $0.runs(scenario, batched: variant.batch > 1) }.map {
                        var item = variant
                        item.system = $0
                        return item
                    })
            }
        }
        return groups
    }

    func run() throws {
        var machine = BenchMachine.probe(cpus: chosenCPUs)
        let groups = plan()
        let total = groups.reduce(0) { $0 + $1.count } * rounds
        print(
            "shmring bench: \(size)-byte messages, \(duration) a run, \(rounds) round\(rounds == 1 ? "" : "s"), "
                + "CPUs \(chosenCPUs.0) and \(chosenCPUs.1), \(total) runs")
        print(machine.summary)
        if isDebugBuild { print("note: a debug build; build with -c release for meaningful numbers") }
        let daemons = BenchDaemons(directory: peersDirectory, systems: chosenSystems)
        defer { daemons.stop() }
        var runner = BenchRunner(
            durationNanoseconds: duration.nanoseconds, cpus: chosenCPUs,
            ticksPerNanosecond: machine.ticksPerNanosecond, usesTSC: machine.usesTSC,
            stallNanoseconds: UInt64(stallMs) * 1_000_000, peersDirectory: peersDirectory)
        var results = BenchResults(groups: groups, rounds: rounds)
        var progress = BenchProgress(total: total)
        for round in 0..<rounds {
            for group in groups {
                // Alternating order: whatever drifts during a group weighs on both sides of a ratio.
                for item in round % 2 == 0 ? group : group.reversed() {
                    progress.show("round \(round + 1)/\(rounds): \(item.label), \(item.system.rawValue)")
                    results.record(item, round: round, runner.run(item))
                }
            }
        }
        progress.finish()
        machine.probeAfter(cpus: chosenCPUs)
        print(machine.placementLine)
        print(BenchReport.table(results))
        if let json {
            try BenchReport.write(BenchReport.json(results, machine: machine, settings: self), to: json)
            print("JSON: \(json)")
        }
        if !noPlot {
            try BenchReport.write(BenchReport.svg(results), to: plot)
            print("plot: \(plot)")
        }
        if results.failedBuiltIn { throw ExitCode(1) }
    }

    var isDebugBuild: Bool {
        #if DEBUG
        true
        #else
        false
        #endif
    }
}

/// A duration given as 300ms, 2s, 1.5s or 500us.
struct BenchDuration: ExpressibleByArgument, CustomStringConvertible {
    var nanoseconds: UInt64

    init(nanoseconds: UInt64) { self.nanoseconds = nanoseconds }

    init?(argument: String) {
        let units: [(String, Double)] = [("ms", 1e6), ("us", 1e3), ("ns", 1), ("s", 1e9), ("m", 60e9)]
        for (suffix, scale) in units where argument.hasSuffix(suffix) {
            guard let value = Double(argument.dropLast(suffix.count)), value.isFinite, value >= 0, value * scale < 1e15
            else { return nil }
            nanoseconds = UInt64(value * scale)
            return
        }
        return nil
    }

    var description: String {
        nanoseconds % 1_000_000_000 == 0 ? "\(nanoseconds / 1_000_000_000)s" : "\(nanoseconds / 1_000_000)ms"
    }
}

/// The one-line progress report on a terminal.
struct BenchProgress {
    let total: Int
    let terminal = isatty(2) == 1
    var count = 0

    mutating func show(_ text: String) {
        count += 1
        guard terminal else { return }
        printError("\r\u{1B}[K[\(count)/\(total)] \(text)", newline: false)
    }

    func finish() {
        if terminal { printError("\r\u{1B}[K", newline: false) }
    }
}
