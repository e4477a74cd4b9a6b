import Testing

@testable import ShmRing

#if canImport(Glibc)
import Glibc
#endif

extension MultiProcess {
    /// Memory that nobody trusts: a mutator thread in the producer process (the only process that
    /// can write the sealed header and data) rewrites record headers, the producer line, the
    /// boundary index, the counters, the configuration and every slot page at random while four
    /// consumer processes (two gating, one lossy, one gating with a lag limit) read. No process
    /// may crash (a signal fails the test) or hang (deadlines); every poll ends in messages or a
    /// typed `RingError`. The seed is printed; SHMRING_FUZZ_SEED replays a run.
    @Suite struct RingFuzzTests {
        static var cases: Int { getenv("SHMRING_FUZZ_CASES").flatMap { Int(String(cString: $0)) } ?? 10_000 }

        @Test func aMutatorRewritingSharedMemoryNeverCrashesOrHangsAnyone() throws {
            let key = uniqueKey()
            let seed =
                getenv("SHMRING_FUZZ_SEED").flatMap { UInt64(String(cString: $0)) } ?? UInt64.random(in: 1...UInt64.max)
            print("fuzz: seed \(seed) (SHMRING_FUZZ_SEED=\(seed) replays it), \(Self.cases) cases")
            let producer = try ChildProcess(
                TestPeer.forHeavyLoops,
                ["ring-fuzz-produce", "--key", key, "--seed", "\(seed)", "--cases", "\(Self.cases)"])
            try #require(producer.waitForReady("created"))
            let consumers = try ["gating", "gating", "lossy", "limited"].map { policy in
                (
                    policy,
                    try ChildProcess(
                        TestPeer.forHeavyLoops,
                        ["ring-fuzz-consume", "--key", key, "--policy", policy, "--seconds", "300"])
                )
            }
            #expect(producer.wait(timeout: .seconds(300)) == .exited(0), "seed \(seed): \(producer.standardError)")
            let produced = producer.results
            #expect(produced["cases"] == "\(Self.cases)", "seed \(seed)")
            var totals = (valid: 0, altered: 0)
            for (policy, consumer) in consumers {
                #expect(
                    consumer.wait(timeout: .seconds(300)) == .exited(0),
                    "seed \(seed), \(policy): \(consumer.standardError)")
                let results = consumer.results
                #expect(results["ended"] == "producer gone", "seed \(seed), \(policy): \(results)")
                let valid = Int(results["valid"] ?? "") ?? 0
                let altered = Int(results["altered"] ?? "") ?? 0
                #expect(valid > 0, "seed \(seed), \(policy): \(results)")
                // A rewritten length or tail intent can hand out a plausible but wrong message
                // (the ring carries no payload checksum); never more than a small share.
                #expect(altered <= Self.cases, "seed \(seed), \(policy): \(results)")
                totals.valid += valid
                totals.altered += altered
                print(
                    "fuzz \(policy): \(valid) valid, \(altered) altered, \(results["attaches"] ?? "?") attachments, "
                        + "typed errors \(results["errors"] ?? "?")")
            }
            print(
                "fuzz: seed \(seed), \(produced["cases"] ?? "?") cases (record headers \(produced["cases_recordHeader"] ?? "?"), "
                    + "producer line \(produced["cases_producerLine"] ?? "?"), boundary index "
                    + "\(produced["cases_boundaryIndex"] ?? "?"), counters \(produced["cases_counters"] ?? "?"), "
                    + "configuration \(produced["cases_configuration"] ?? "?"), slot pages \(produced["cases_slotPage"] ?? "?")), "
                    + "\(produced["published"] ?? "?") published; consumers: \(totals.valid) valid, \(totals.altered) altered, "
                    + "no crash, no hang")
        }
    }
}
