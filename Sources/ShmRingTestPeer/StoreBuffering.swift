import CShmAtomics
import CShmLinux
import CShmTestSupport
import ShmRing
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The store-buffering (Dekker) litmus test of the atomics shim.
///
/// Two threads, round after round: thread A stores round number `i` into `x`, then (with the
/// fence variant) runs the shim's seq_cst fence, then loads `y`; thread B does the same with `y`
/// and `x`. If both loads return a value older than `i`, both stores were still in their store
/// buffers when the loads ran: the one reordering x86-TSO allows, and exactly what the fence must
/// forbid. The stores carry the round number, so nothing needs resetting between rounds.
///
/// Rounds start together through a two-sided spin barrier (each thread publishes the round it
/// reached and waits for the other's), so the two critical sections overlap as often as the
/// hardware lets them.
///
/// `--iterations N --fence seq_cst|none`; reports `iterations=N`, `both_old=K` (forbidden by the
/// fence) and `fence=...`.
enum StoreBuffering {
    /// Shared words, each on its own cache line (128 bytes apart: adjacent-line prefetch).
    final class Shared: @unchecked Sendable {
        // @unchecked Sendable: every shared word is accessed through the atomics shim only.
        let words: UnsafeMutableRawPointer
        let sawOther: [UnsafeMutablePointer<UInt8>]
        let iterations: Int
        let fenced: Bool

        init(iterations: Int, fenced: Bool) {
            words = UnsafeMutableRawPointer.allocate(byteCount: 4 * 128, alignment: 128)
            words.initializeMemory(as: UInt8.self, repeating: 0, count: 4 * 128)
            sawOther = (0..<2).map { _ in
                let results = UnsafeMutablePointer<UInt8>.allocate(capacity: iterations + 1)
                results.initialize(repeating: 0, count: iterations + 1)
                return results
            }
            self.iterations = iterations
            self.fenced = fenced
        }

        /// `x` (thread 0 stores) and `y` (thread 1 stores), then the two barrier words.
        func data(_ thread: Int) -> UnsafeMutablePointer<UInt64> {
            (words + thread * 128).assumingMemoryBound(to: UInt64.self)
        }
        func arrived(_ thread: Int) -> UnsafeMutablePointer<UInt64> {
            (words + (2 + thread) * 128).assumingMemoryBound(to: UInt64.self)
        }
    }

    static func run(_ options: PeerOptions) throws {
        let iterations = options.int("iterations")
        let fence = options.string("fence")
        guard fence == "seq_cst" || fence == "none" else { PeerRuntime.fail("--fence seq_cst|none") }
        // Both threads must run at once, on two CPUs: time-sliced on one, they would never show
        // the reordering and each round would wait for a scheduler tick.
        guard CShmTestSupport_usable_cpus() >= 2 else { PeerRuntime.fail("needs two usable CPUs") }
        let shared = Shared(iterations: iterations, fenced: fence == "seq_cst")
        let threads = try (0..<2).map { index in
            try startThread { body(shared, index) }
        }
        for thread in threads { pthread_join(thread, nil) }
        var bothOld = 0
        for round in 1...iterations where shared.sawOther[0][round] == 0 && shared.sawOther[1][round] == 0 {
            bothOld += 1
        }
        PeerRuntime.report("iterations=\(iterations)")
        PeerRuntime.report("fence=\(fence)")
        PeerRuntime.report("both_old=\(bothOld)")
    }

    static func body(_ shared: Shared, _ me: Int) {
        let other = 1 - me
        let mine = shared.data(me)
        let theirs = shared.data(other)
        let myArrival = shared.arrived(me)
        let theirArrival = shared.arrived(other)
        let results = shared.sawOther[me]
        // One thread per CPU (best effort: a failure only makes the run slower).
        _ = CShmTestSupport_pin_thread_to_cpu(Int32(me))
        for round in 1...UInt64(shared.iterations) {
            // Barrier. Release/acquire pair: my arrival store with the other thread's load of it,
            // so a round's stores are not observed before both threads finished the previous one.
            CShmAtomics_u64_store_release(myArrival, round)
            var spins = 0
            while CShmAtomics_u64_load_acquire(theirArrival) < round {
                // Spin, but yield now and then, so that a busy machine cannot stall the barrier.
                spins += 1
                if spins & 0xfff == 0 { sched_yield() } else { CShmAtomics_pause() }
            }

            // The litmus test. Release store and acquire load: on x86-64 both are plain moves, so
            // without the fence the load may pass the store (store buffer).
            CShmAtomics_u64_store_release(mine, round)
            if shared.fenced {
                // The fence under test; its partner is the same fence in the other thread.
                CShmAtomics_fence_seq_cst()
            }
            let seen = CShmAtomics_u64_load_acquire(theirs)
            results[Int(round)] = seen >= round ? 1 : 0
        }
    }
}
