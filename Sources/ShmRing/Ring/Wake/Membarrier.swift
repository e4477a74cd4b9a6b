import CShmAtomics
import CShmLinux

/// The asymmetric fence of the wake-up protocol (docs/wakeup.md): the side that never fences on
/// its fast path registers its process once; the side about to sleep calls `fenceWithOthers()`,
/// which makes every running thread of every registered process pass a full barrier.
enum Membarrier {
    /// This process is registered for expedited global membarriers (done once, at the first
    /// producer or consumer). False where the kernel or a seccomp filter refuses: then this
    /// process's producers fence on every publish, and its consumers on every poll that moves
    /// their cursor, instead.
    static let registered: Bool = CShmLinux_membarrier_register_global_expedited() == 0

    /// The sleeper's half of the fence: `membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED)`, or a full
    /// fence where the kernel refuses it (then the other side may not have fenced: a wake can be
    /// missed and only the wait's timeout ends the sleep: docs/wakeup.md).
    static func fenceWithOthers() {
        if !refused && CShmLinux_membarrier_global_expedited() == 0 { return }
        refused = true
        CShmAtomics_fence_seq_cst()
    }

    /// membarrier failed once in this process: do not try again (a benign race: a Bool).
    nonisolated(unsafe) static var refused = false
}
