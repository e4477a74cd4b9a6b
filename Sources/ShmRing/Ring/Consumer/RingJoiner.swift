import CShmAtomics

#if canImport(Glibc)
import Glibc
#endif

/// How a consumer joins a running ring without a lock (docs/ring.md, "Joining"): register, then
/// validate against the producer's published limit, and choose again if it was overtaken.
struct RingJoiner {
    let view: RingView
    let slot: ConsumerSlot
    let state: UnsafeMutablePointer<ConsumerState>

    /// Stores the start cursor, marks the slot active, then reads the producer's published limit;
    /// the start is safe when the producer cannot write past start + capacity without looking at
    /// the slots again. Otherwise it was overtaken: choose a newer start and check again.
    func join(from start: RingStartPosition, policy: ConsumerPolicy, lagLimit: LagLimit?) throws(ReadFailure) {
        let capacity = UInt64(view.capacity)
        CShmAtomics_u32_store_relaxed(slot.word32(RingLayout.Slot.policy), policy.rawValue)
        CShmAtomics_u32_store_relaxed(slot.word32(RingLayout.Slot.pid), UInt32(bitPattern: getpid()))
        // Relaxed: published by the seq_cst store of `active` below (the producer reads them after it).
        CShmAtomics_u64_store_relaxed(slot.word(RingLayout.Slot.lagLimitBytes), UInt64(lagLimit?.bytes ?? 0))
        CShmAtomics_u64_store_relaxed(
            slot.word(RingLayout.Slot.lagLimitNanoseconds),
            lagLimit?.time.map { UInt64(max(1, $0.clampedNanoseconds)) } ?? 0)
        var from = start
        for attempt in 0..<1000 {
            if attempt >= 10 { from = .newest }  // the oldest keeps being overwritten: start at the tail
            if attempt > 0 { sched_yield() }
            guard let candidate = try startCandidate(from) else { continue }
            if attempt > 0 {
                // Not active while the cursor changes: the producer never samples a start that
                // was already refused together with this registration.
                CShmAtomics_u64_store_release(slot.word(RingLayout.Slot.active), 0)
            }
            CShmAtomics_u64_store_relaxed(slot.word(RingLayout.Slot.cursor), candidate.position)
            // Seq_cst: the joiner's half of the Dekker handshake with the producer's rescan.
            // Partner: GatingScanner.publishLimit (seq_cst fence, slot loads, seq_cst store of limit).
            CShmAtomics_u64_store_seq_cst(slot.word(RingLayout.Slot.active), slot.generation)
            let limit = CShmAtomics_u64_load_seq_cst(view.word(RingLayout.Producer.limit))
            // Safe when start <= limit <= start + capacity (by difference: positions wrap; a limit
            // behind the start cannot be right: choose again).
            if limit &- candidate.position <= capacity {
                state.pointee.position = candidate.position
                state.pointee.sequence = candidate.sequence
                state.pointee.publishedCursor = candidate.position
                // Release: the validated registration. From here on a cursor outside the window
                // is not a joiner's passing state but a page that cannot be trusted: the producer
                // evicts it (partner: its acquire load in GatingScanner.sampleSlot).
                // A compare-and-swap, not a store: the producer's server, at the join timeout,
                // swaps in `joinRefused` unless the generation is there (SlotBoard.decideJoin);
                // exactly one of the two wins. Acq_rel: the release above, and the acquire of the
                // server's refusal.
                // Relaxed: only the compare-and-swap's first expected value; the exchange decides.
                var found = CShmAtomics_u64_load_relaxed(slot.word(RingLayout.Slot.joined))
                while found != RingLayout.Slot.joinRefused {
                    if CShmAtomics_u64_compare_exchange_acq_rel(
                        slot.word(RingLayout.Slot.joined), &found, slot.generation)
                    {
                        return
                    }
                }
                throw .joinRefused
            }
        }
        throw .joinNeverValidated
    }

    /// Where to start: the end of the published records (from the shared tail, which lags, to
    /// the first record not committed yet), or the oldest boundary-index entry the producer still
    /// retains.
    private func startCandidate(_ start: RingStartPosition) throws(ReadFailure) -> (
        position: UInt64, sequence: UInt64
    )? {
        // The limit before the tail: the tail then is at least as new as the limit's scan, so the
        // window [limit - capacity, tail] is well-formed (checked below anyway).
        // Acquire: pairs with the producer's seq_cst store of the limit.
        let limit = CShmAtomics_u64_load_acquire(view.word(RingLayout.Producer.limit))
        let tail = try view.publishedTail()
        guard start == .oldest else { return view.endOfRecords(from: tail) }
        let retained = limit &- UInt64(view.capacity)  // the producer has not been free to overwrite from here on
        guard Int64(bitPattern: tail.position &- retained) >= 0 else { return nil }  // a newer scan: read again
        return view.oldestBoundary(notBefore: retained, tail: tail)
    }
}
