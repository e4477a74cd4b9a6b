import Testing

@testable import ShmRing

#if canImport(Glibc)
import Glibc
#endif

extension MultiProcess {
    /// Publish and poll make no system call, and no allocation, retain, release, exclusivity check
    /// or lock (docs/ring.md, "The hot path"). Needs the release-built peer (scripts/test makes it):
    /// in a debug build these properties do not hold and are not claimed.
    @Suite(.enabled(if: TestPeer.heavyLoopsAreOptimized, "needs the release peer (scripts/test)"))
    struct HotPathTests {
        /// A seccomp filter that kills the process on any system call but exit and write(1) is
        /// installed before 1 000 000 publish+poll rounds of 64 bytes, with a gating consumer
        /// (in place) and with a lossy one (copy, then validate).
        @Test(arguments: ["gating", "lossy"])
        func noSystemCallInAMillionPublishAndPollRounds(policy: String) throws {
            let peer = try ChildProcess(
                TestPeer.forHeavyLoops,
                ["ring-hot-loop", "--messages", "1000000", "--size", "64", "--seccomp", "1", "--policy", policy],
                expectCrash: true)
            #expect(peer.wait(timeout: .seconds(300)) == .exited(0), "a system call in the loop is SIGSYS (31)")
            #expect(peer.results["policy"] == policy)
            #expect(peer.results["delivered"] == "1000000")
            // Every message's first byte is 1: the sum of a million of them, modulo 256.
            #expect(peer.results["checksum"] == "\(1_000_000 % 256)")
        }

        /// The filter itself is checked: one getppid() per round in the same loop is caught.
        @Test func theFilterCatchesASystemCall() throws {
            let peer = try ChildProcess(
                TestPeer.forHeavyLoops,
                ["ring-hot-loop", "--messages", "1000", "--size", "64", "--seccomp", "1", "--syscall-in-loop", "1"],
                expectCrash: true)
            #expect(peer.wait(timeout: .seconds(300)) == .signaled(SIGSYS))
        }

        /// callgrind collects everything executed inside the measured loop (and whatever it calls)
        /// over 100 000 rounds, gating and lossy: none of the runtime's retain, release, allocation or exclusivity
        /// entry points may appear. valgrind 3.19 cannot read the toolchain's DWARF 5, so it runs
        /// on a copy without debug information (the symbols stay).
        @Test(arguments: ["gating", "lossy"])
        func noRetainReleaseAllocationOrExclusivityCheckInTheLoop(policy: String) throws {
            let directory = "/tmp/shmring-callgrind-\(getpid())-\(policy)"
            mkdir(directory, 0o700)
            defer {
                unlink("\(directory)/peer")
                unlink("\(directory)/callgrind.out")
                rmdir(directory)
            }
            let strip = try ChildProcess(
                "/usr/bin/objcopy", ["--strip-debug", TestPeer.forHeavyLoops, "\(directory)/peer"])
            try #require(strip.wait() == .exited(0), "\(strip.standardError)")
            let messages = 100_000
            let run = try ChildProcess(
                "/usr/bin/valgrind",
                [
                    "--tool=callgrind", "--callgrind-out-file=\(directory)/callgrind.out",
                    "--toggle-collect=shmring_hot_publish_poll", "\(directory)/peer", "ring-hot-loop", "--messages",
                    "\(messages)", "--size", "64", "--policy", policy,
                ])
            #expect(run.wait(timeout: .seconds(600)) == .exited(0), "\(run.standardError)")
            let annotate = try ChildProcess(
                "/usr/bin/callgrind_annotate", ["--inclusive=yes", "--threshold=100", "\(directory)/callgrind.out"])
            try #require(annotate.wait(timeout: .seconds(120)) == .exited(0), "\(annotate.standardError)")
            let report = annotate.standardOutput
            let forbidden = [
                "swift_retain", "swift_release", "swift_bridgeObjectRetain", "swift_bridgeObjectRelease",
                "swift_unknownObjectRetain", "swift_beginAccess", "swift_endAccess", "swift_allocObject", "malloc",
                "free", "pthread_mutex_lock", "swift_once",
            ]
            let lines = report.split(separator: "\n")
            for symbol in forbidden {
                let hits = lines.filter {
                    $0.contains(":\(symbol) ") || $0.contains(":\(symbol)@") || $0.hasSuffix(":\(symbol)")
                }
                #expect(hits.isEmpty, "\(symbol) ran inside the loop: \(hits)")
            }
            // Instructions per publish+poll round, for docs/performance.md.
            if let total = lines.first(where: { $0.contains(":shmring_hot_publish_poll ") }) {
                let count = Int(String(total.split(separator: " ").first!.filter { $0 != "," })) ?? 0
                print(
                    "hot path, \(policy): \(count / messages) instructions per 64-byte publish+poll round (callgrind)")
                #expect(count > 0)
            } else {
                Issue.record("callgrind collected nothing in shmring_hot_publish_poll:\n\(report)")
            }
        }
    }
}
