import CShmBench
import Histogram

/// What `shmring bench` measures: scenarios, systems, and which system runs which scenario
/// (docs/benchmarking.md).
enum BenchScenario: String, CaseIterable {
    case throughput
    case rttSpin = "rtt-spin"
    case rttBlock = "rtt-block"
    case fanout
    case latency

    var code: Int32 {
        switch self {
        case .throughput: Int32(CSHMBENCH_THROUGHPUT)
        case .rttSpin: Int32(CSHMBENCH_RTT_SPIN)
        case .rttBlock: Int32(CSHMBENCH_RTT_BLOCK)
        case .fanout: Int32(CSHMBENCH_FANOUT)
        case .latency: Int32(CSHMBENCH_LATENCY)
        }
    }

    /// Scenarios whose samples wait for an answer before the next message (a round trip, or every
    /// consumer's acknowledgement): their load follows the system, and the table says so.
    var closedLoop: Bool { self != .throughput && self != .latency }
}

enum BenchSystem: String, CaseIterable {
    case shmring
    case cTwin = "c-twin"
    case plainRing = "plain-ring"
    case lineFloor = "line-floor"
    case pipe
    case unixSocket = "unix-socket"
    case eventfd
    case futex
    case boostMQ = "boost-mq"
    case zeromq
    case qtShm = "qt-shm"
    case iceoryx

    static let peers: [BenchSystem] = [.boostMQ, .zeromq, .qtShm, .iceoryx]
    static let builtIn: [BenchSystem] = allCases.filter { !peers.contains($0) }

    var isPeer: Bool { Self.peers.contains(self) }

    /// The scenarios this system runs. Batches (`--batch`): ShmRing and the C rings only.
    func runs(_ scenario: BenchScenario, batched: Bool = false) -> Bool {
        if batched { return scenario == .throughput && [.shmring, .cTwin, .plainRing].contains(self) }
        switch self {
        case .shmring: return true
        case .cTwin, .plainRing: return scenario == .throughput || scenario == .rttSpin
        case .lineFloor: return scenario == .rttSpin
        case .pipe: return scenario != .rttSpin
        case .unixSocket: return [.throughput, .rttBlock, .latency].contains(scenario)
        case .eventfd, .futex: return scenario == .rttBlock
        case .boostMQ, .zeromq, .qtShm, .iceoryx: return [.throughput, .rttBlock, .latency].contains(scenario)
        }
    }
}

/// One row of the results: a system in a scenario with its parameters.
struct BenchCase: Hashable {
    var system: BenchSystem
    var scenario: BenchScenario
    var size: Int
    var batch = 1
    var rate: Int? = nil
    var consumers = 1

    /// The ShmRing row this row is compared with.
    var reference: BenchCase {
        var reference = self
        reference.system = .shmring
        return reference
    }

    var label: String {
        var text = scenario.rawValue
        if let rate { text += " @ \(BenchFormat.count(Double(rate)))/s" }
        if batch > 1 { text += " batch \(batch)" }
        if scenario == .fanout { text += " x\(consumers)" }
        return text
    }
}

/// What one run of a case measured (latencies in nanoseconds).
struct BenchOutcome {
    var messagesPerSecond: Double?
    var deliveriesPerSecond: Double?
    var latencies: Histogram<UInt64>?
    var sleptShare: Double?
    /// The run filled its sample space before its duration ended.
    var capped = false
    var failure: String?
}
