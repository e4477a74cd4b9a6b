import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

extension MultiProcess {
    /// The wake-up protocol's model, Tests/Models/wakeup.pml (docs/wakeup.md), checked with Spin:
    /// both directions (a consumer asleep on an empty ring, a producer asleep on a full one) under
    /// x86-TSO store buffers. The protocol has no lost wake-up (an invalid end state: a side asleep
    /// for ever) and no cycle without progress under weak fairness; each of the two mutants (no
    /// re-check after announcing, no fence on the waking side) makes Spin report a lost wake-up.
    /// Needs `spin` (scripts/test installs it) and a C compiler (the toolchain's clang).
    @Suite struct WakeupModelTests {
        /// Runs Spin's verifier on `model` (in Tests/Models) with `defines`; returns its report.
        func verify(_ defines: [String], progress: Bool = false, model name: String = "wakeup.pml") throws -> String {
            let model = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
                .appendingPathComponent("../Models/\(name)").standardizedFileURL.path
            let directory = "/tmp/shmring-spin-\(getpid())-\(name)-\(defines.joined())\(progress ? "-np" : "")"
            mkdir(directory, 0o700)
            defer { _ = try? FileManager.default.removeItem(atPath: directory) }
            let flags = defines.map { "-D\($0)" }.joined(separator: " ")
            // pan.c is generated C; -DNP checks for non-progress cycles (with -l -f: weak fairness).
            let script = """
                set -e
                cd \(directory)
                compiler=$(command -v clang || command -v cc || command -v gcc)
                spin \(flags) -a \(model) >/dev/null
                "$compiler" -O2 -w \(progress ? "-DNP" : "-DSAFETY") -DCOLLAPSE -o pan pan.c
                ./pan -m10000000 \(progress ? "-l -f" : "")
                """
            let run = try ChildProcess("/bin/sh", ["-c", script])
            #expect(run.wait(timeout: .seconds(600)) == .exited(0), "\(run.standardError)")
            let report = run.standardOutput
            #expect(!report.contains("max search depth too small"), "the search was cut short:\n\(report)")
            return report
        }

        @Test func theProtocolLosesNoWakeUp() throws {
            let report = try verify([])
            #expect(report.contains("invalid end states\t+"), "end states were not checked:\n\(report)")
            #expect(report.contains("errors: 0"), "\(report)")
        }

        @Test func theProtocolAlwaysMakesProgress() throws {
            let report = try verify([], progress: true)
            #expect(report.contains("non-progress cycles \t+ (fairness enabled)"), "\(report)")
            #expect(report.contains("errors: 0"), "\(report)")
        }

        /// Two consumers share the doorbell (Tests/Models/wakeup-consumers.pml): both read every
        /// message, woken by the producer (one of them) and by the pass-on (the other).
        @Test func consumersSharingTheDoorbellLoseNoWakeUp() throws {
            let report = try verify([], model: "wakeup-consumers.pml")
            #expect(report.contains("invalid end states\t+") && report.contains("errors: 0"), "\(report)")
        }

        /// NAIVE_ANNOUNCE: a consumer that overwrites any announcement ahead of its own, without
        /// looking at the epoch again, lowers another's newer one and leaves it asleep.
        /// NO_PASS_ON: the consumer the producer woke does not wake the others. NO_COUNT_FENCE:
        /// the producer reads the sleepers' count without a fence after its epoch store, and
        /// misses a consumer about to sleep.
        @Test(arguments: ["NAIVE_ANNOUNCE", "NO_PASS_ON", "NO_COUNT_FENCE"])
        func aConsumersMutantLosesAWakeUp(_ mutant: String) throws {
            let report = try verify([mutant], model: "wakeup-consumers.pml")
            #expect(report.contains("pan:1: invalid end state") && report.contains("errors: 1"), "\(report)")
        }

        /// NO_RECHECK: the side about to sleep does not look for data (or space) again after
        /// announcing itself. NO_FENCE: it issues an ordinary fence instead of membarrier, which
        /// leaves the waking side without a fence between its store and its look at the sleepers.
        @Test(arguments: ["NO_RECHECK", "NO_FENCE"])
        func aMutantLosesAWakeUp(_ mutant: String) throws {
            let report = try verify([mutant])
            #expect(report.contains("pan:1: invalid end state"), "\(mutant) was not caught:\n\(report)")
            #expect(report.contains("errors: 1"), "\(report)")
        }
    }
}
