import ArgumentParser
import CShmBench

#if canImport(Glibc)
import Glibc
#endif

/// A process of `shmring bench` (internal): one role of ShmRing or of a C baseline, started by
/// the bench with its shared page as descriptor 3 (Sources/CShmBench/include/CShmBench.h).
struct BenchRole: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-role", abstract: "A process of `shmring bench` (internal).", shouldDisplay: false)

    @Argument var system: String
    @Argument(parsing: .captureForPassthrough) var settings: [String] = []

    func run() throws {
        var argv = settings.map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var parameters = CShmBench_params()
        guard CShmBench_parse(Int32(settings.count), &argv, &parameters) == 0 else { throw ExitCode(2) }
        let status: Int32
        if system == BenchSystem.shmring.rawValue {
            status = ShmRingRoles(parameters).run()
        } else {
            status = CShmBench_run(system, &parameters)
        }
        throw ExitCode(status)
    }
}
