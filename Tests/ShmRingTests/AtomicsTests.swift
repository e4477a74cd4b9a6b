import CShmAtomics
import CShmLinux
import CShmTestSupport
import Testing

@Suite struct AtomicsTests {
    @Test func readModifyWriteOperationsReturnThePreviousValue() {
        let word = UnsafeMutablePointer<UInt64>.allocate(capacity: 1)
        defer { word.deallocate() }
        word.initialize(to: 40)
        #expect(CShmAtomics_u64_fetch_add_acq_rel(word, 2) == 40)
        #expect(CShmAtomics_u64_load_acquire(word) == 42)
        #expect(CShmAtomics_u64_exchange_seq_cst(word, 7) == 42)
        var expected: UInt64 = 8
        #expect(!CShmAtomics_u64_compare_exchange_acq_rel(word, &expected, 9))
        #expect(expected == 7, "a failed compare-exchange reports the current value")
        #expect(CShmAtomics_u64_compare_exchange_acq_rel(word, &expected, 9))
        #expect(CShmAtomics_u64_load_relaxed(word) == 9)
        // Wrapping, as positions do.
        CShmAtomics_u64_store_release(word, UInt64.max)
        #expect(CShmAtomics_u64_fetch_add_relaxed(word, 1) == UInt64.max)
        #expect(CShmAtomics_u64_load_seq_cst(word) == 0)
    }

    @Test func thirtyTwoBitOperations() {
        let word = UnsafeMutablePointer<UInt32>.allocate(capacity: 1)
        defer { word.deallocate() }
        word.initialize(to: UInt32.max)
        #expect(CShmAtomics_u32_fetch_add_seq_cst(word, 1) == UInt32.max)
        #expect(CShmAtomics_u32_load_acquire(word) == 0)
        var expected: UInt32 = 0
        #expect(CShmAtomics_u32_compare_exchange_seq_cst(word, &expected, 5))
        CShmAtomics_u32_store_seq_cst(word, 6)
        #expect(CShmAtomics_u32_exchange_acq_rel(word, 1) == 6)
    }
}

extension MultiProcess {
    /// The store-buffering litmus test (docs/testing.md): proves the shim's seq_cst fence is a real
    /// fence, in a release-built peer so that a million rounds take well under a second.
    @Suite(.enabled(if: CShmTestSupport_usable_cpus() >= 2, "needs two CPUs")) struct StoreBufferingTests {
        static let iterations = 1_000_000

        func run(fence: String) throws -> Int {
            let peer = try ChildProcess(
                TestPeer.forHeavyLoops,
                ["store-buffering", "--iterations", "\(Self.iterations)", "--fence", fence])
            let status = peer.wait(timeout: .seconds(300))
            #expect(status == .exited(0), "\(peer.standardError)")
            let results = peer.results
            #expect(results["iterations"] == "\(Self.iterations)")
            let bothOld = try #require(results["both_old"].flatMap(Int.init))
            print(
                "store-buffering, fence \(fence): \(bothOld) of \(Self.iterations) rounds both loads saw the old value")
            return bothOld
        }

        @Test func theSeqCstFenceForbidsStoreLoadReordering() throws {
            #expect(try run(fence: "seq_cst") == 0)
        }

        /// The detector's calibration: without the fence, x86-TSO lets each load pass the store
        /// before it, and the test must see it (measured here: 1 % to 54 % of rounds). If it did
        /// not, the fenced run's zero would prove nothing.
        @Test func withoutTheFenceTheReorderingShows() throws {
            #expect(try run(fence: "none") > 0)
        }
    }
}
