import CShmBench

#if canImport(Glibc)
import Glibc
#endif

/// The machine a bench ran on: what the JSON's "machine" says, the clock's calibration and the
/// vCPUs' placement, probed before and after the runs.
struct BenchMachine {
    var cpu = "unknown"
    var cores = 0
    var kernel = "unknown"
    var swift = Self.compiler
    var clocksource = "unknown"
    var usesTSC = false
    var ticksPerNanosecond = 1.0
    /// How far apart two calibrations of the TSC came out (a fraction).
    var calibrationSpread = 0.0
    var tscNote = ""
    var placementBefore: (String, UInt64) = ("unknown", 0)
    var placementAfter: (String, UInt64) = ("unknown", 0)

    /// A cache line's round trip between the two CPUs below this is the "near" placement
    /// (about 90 ns here; the "far" one is about 400 ns).
    static let nearBelowNanoseconds: UInt64 = 250

    static var compiler: String {
        #if compiler(>=6.4)
        "6.4 or later"
        #elseif compiler(>=6.3)
        "6.3"
        #elseif compiler(>=6.2)
        "6.2"
        #else
        "before 6.2"
        #endif
    }

    static func probe(cpus: (Int32, Int32)) -> BenchMachine {
        var machine = BenchMachine()
        let cpuinfo = readTextFile("/proc/cpuinfo") ?? ""
        if let line = cpuinfo.split(separator: "\n").first(where: { $0.hasPrefix("model name") }),
            let colon = line.firstIndex(of: ":")
        {
            machine.cpu = String(line[line.index(after: colon)...].drop { $0 == " " })
        }
        machine.cores = sysconf(Int32(_SC_NPROCESSORS_ONLN))
        var name = utsname()
        if uname(&name) == 0 {
            machine.kernel = withUnsafeBytes(of: name.release) {
                String(cString: $0.bindMemory(to: CChar.self).baseAddress!)
            }
        }
        machine.clocksource =
            (readTextFile("/sys/devices/system/clocksource/clocksource0/current_clocksource") ?? "unknown")
            .split(separator: "\n").first.map(String.init) ?? "unknown"
        let flags =
            cpuinfo.split(separator: "\n").first { $0.hasPrefix("flags") }.map { $0.split(separator: " ") } ?? []
        let invariant = flags.contains("constant_tsc") && flags.contains("nonstop_tsc")
        // Two calibrations against CLOCK_MONOTONIC_RAW; the TSC is used when the CPU says it is
        // invariant and both agree within 0.1 %.
        let first = CShmBench_calibrate(50_000_000)
        let second = CShmBench_calibrate(50_000_000)
        machine.calibrationSpread = first > 0 && second > 0 ? abs(first - second) / first : 1
        #if arch(x86_64)
        if !invariant {
            machine.tscNote = "the CPU does not report an invariant TSC (constant_tsc, nonstop_tsc)"
        } else if machine.calibrationSpread > 0.001 {
            machine.tscNote = "two calibrations differ by \(BenchFormat.percent(machine.calibrationSpread))"
        } else {
            machine.usesTSC = true
            machine.ticksPerNanosecond = (first + second) / 2
        }
        #else
        machine.tscNote = "no TSC on this architecture"
        #endif
        machine.placementBefore = placement(cpus)
        return machine
    }

    mutating func probeAfter(cpus: (Int32, Int32)) { placementAfter = Self.placement(cpus) }

    static func placement(_ cpus: (Int32, Int32)) -> (String, UInt64) {
        let nanoseconds = CShmBench_probe_placement(cpus.0, cpus.1, 20_000)
        guard nanoseconds > 0 else { return ("unknown", 0) }
        return (nanoseconds < nearBelowNanoseconds ? "near" : "far", nanoseconds)
    }

    var clockLine: String {
        usesTSC
            ? "clock: TSC at \(BenchFormat.fixed(ticksPerNanosecond, 3)) GHz (clocksource \(clocksource)), "
                + "two calibrations against CLOCK_MONOTONIC_RAW \(BenchFormat.percent(calibrationSpread)) apart"
            : "clock: CLOCK_MONOTONIC (about 20 ns a read), because \(tscNote)"
    }

    var summary: String {
        "machine: \(cpu), \(cores) CPUs, Linux \(kernel), Swift \(swift)\n\(clockLine)\n"
            + "placement before: \(placementBefore.0) (\(placementBefore.1) ns cache-line round trip)"
    }

    var placementLine: String {
        "placement after: \(placementAfter.0) (\(placementAfter.1) ns cache-line round trip)"
            + (placementAfter.0 != placementBefore.0 ? "; the vCPUs moved during the runs: compare only ratios" : "")
    }
}

/// The whole of a small text file (/proc, /sys), or nil.
func readTextFile(_ path: String) -> String? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if count < 0 && errno == EINTR { continue }
        if count <= 0 { break }
        bytes += buffer[0..<count]
    }
    return String(decoding: bytes, as: UTF8.self)
}

/// The daemons some peers need (perf/peers/bin/NAME.daemon, iceoryx's RouDi): started before the
/// runs and stopped after them.
final class BenchDaemons {
    var pids: [pid_t] = []

    init(directory: String, systems: [BenchSystem]) {
        for system in systems where system.isPeer {
            let path = directory + "/" + system.rawValue + ".daemon"
            guard access(path, X_OK) == 0 else { continue }
            // Through setpriv --pdeathsig: the daemon gets SIGTERM when the bench dies, however.
            let setpriv = "/usr/bin/setpriv"
            let arguments = access(setpriv, X_OK) == 0 ? [setpriv, "--pdeathsig", "TERM", path] : [path]
            var pid: pid_t = 0
            guard BenchRunner.spawn(arguments[0], arguments, [], &pid) == 0 else {
                printError("shmring: cannot start \(path); the runs of \(system.rawValue) will fail")
                continue
            }
            pids.append(pid)
            usleep(500_000)  // its socket and shared memory are up before the first run
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid {
                pids.removeLast()
                printError("shmring: \(path) exited at once; the runs of \(system.rawValue) will fail")
            }
        }
    }

    func stop() {
        for pid in pids {
            kill(pid, SIGTERM)
            var status: Int32 = 0
            for _ in 0..<500 where waitpid(pid, &status, WNOHANG) == 0 { usleep(10_000) }
            if waitpid(pid, &status, WNOHANG) == 0 {
                kill(pid, SIGKILL)
                waitpid(pid, &status, 0)
            }
        }
        pids = []
    }
}
