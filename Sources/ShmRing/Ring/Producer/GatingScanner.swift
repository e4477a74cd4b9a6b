import CShmAtomics

#if canImport(Glibc)
import Glibc
#endif

/// The producer's look at its consumers, off the hot path: samples every slot (nothing in a slot
/// page is trusted), computes the gating minimum and publishes the limit (the producer's half of
/// the join handshake), demotes consumers past their lag limit and evicts those whose page holds a
/// value that cannot be right.
@usableFromInline @frozen
struct GatingScanner {
    @usableFromInline let state: UnsafeMutablePointer<ProducerState>

    @usableFromInline
    init(state: UnsafeMutablePointer<ProducerState>) { self.state = state }

    @inlinable var view: RingView { state.pointee.view }
    @inlinable var slotCount: Int { state.pointee.slots.count }
    @inlinable var slotControls: SlotControls { state.pointee.slots.controls }

    @inlinable @inline(__always)
    func slotWord(_ index: Int, _ offset: Int) -> UnsafeMutablePointer<UInt64> {
        state.pointee.slots.word(index, offset)
    }

    /// How many consumers are attached and active now.
    func activeConsumerCount() -> Int {
        var count = 0
        for index in 0..<slotCount {
            // Acquire: pairs with the consumer's seq_cst store of `active`, then with the server's
            // release store of the generation (sampleSlot explains the order).
            let active = CShmAtomics_u64_load_acquire(slotWord(index, RingLayout.Slot.active))
            let generation = CShmAtomics_u64_load_acquire(slotControls.generation(index))
            if generation != 0 && active == generation
                && CShmAtomics_u64_load_relaxed(slotControls.evicted(index)) != generation
            {
                count += 1
            }
        }
        return count
    }

    /// Looks at the gating consumers again, publishes the new limit, and tells whether a record
    /// ending at `end` now fits. Runs at the low watermark (a quarter of the capacity before the
    /// limit), not only when the ring is full. When the record does not fit, consumers whose lag
    /// limit is exceeded are demoted and the consumers are looked at once more.
    @usableFromInline
    func makeRoom(until end: UInt64) -> Bool {
        // The shared tail too, while the producer is off its hot path anyway.
        RingWriter(state: state).publishTail()
        if publishLimit(until: end) || (demoteHoldingBack(end: end) && publishLimit(until: end)) {
            state.pointee.blockedSince = 0
            return true
        }
        state.pointee.refusedEnd = end
        state.pointee.backPressureEvents &+= 1
        CShmAtomics_u64_store_relaxed(
            view.word(RingLayout.Counters.backPressureEvents), state.pointee.backPressureEvents)
        return false
    }

    /// Computes and publishes the limit (the Dekker half of the join handshake) and the next
    /// rescan point; true when a record ending at `end` fits under the limit.
    @usableFromInline
    func publishLimit(until end: UInt64) -> Bool {
        let capacity = UInt64(view.capacity)
        let limitWord = view.word(RingLayout.Producer.limit)
        // Seq_cst fence, then the slot loads: the producer's half of the join handshake (Dekker).
        // Partner: the joiner's seq_cst store of `active` followed by its seq_cst load of `limit`
        // (RingJoiner.join). Either this scan sees the joiner, or the joiner sees the limit
        // stored below.
        CShmAtomics_fence_seq_cst()
        let first = gatingMinimum()
        CShmAtomics_u64_store_seq_cst(limitWord, first &+ capacity)
        let second = gatingMinimum()
        // The lower of the two (positions wrap: compare by difference).
        let minimum = Int64(bitPattern: second &- first) < 0 ? second : first
        let limit = minimum &+ capacity
        if minimum != first { CShmAtomics_u64_store_seq_cst(limitWord, limit) }
        state.pointee.limit = limit
        let watermark = limit &- capacity / 4
        // Look again at the watermark; if already past it, only when the limit itself is reached.
        state.pointee.rescanAt =
            Int64(bitPattern: watermark &- state.pointee.position) > 0 ? watermark : limit
        return Int64(bitPattern: end &- limit) <= 0
    }

    /// The lowest cursor of the active gating consumers, or the producer's position if none.
    ///
    /// Slot memory is written by consumers: each value is read once and checked (`sampleSlot`).
    /// A byte lag limit exceeded demotes the consumer (it stops gating); a cursor outside the
    /// window evicts it.
    @usableFromInline
    func gatingMinimum() -> UInt64 {
        let position = state.pointee.position
        let capacity = UInt64(view.capacity)
        // Never past the end of the visible records: what lies beyond it is this batch's own.
        var largestLag: UInt64 = position &- state.pointee.visibleEnd
        for index in 0..<slotCount {
            switch sampleSlot(index, position: position) {
            case .notGating:
                continue
            case .unstable:
                largestLag = capacity
            case .gating(let generation, let cursor):
                let lag = position &- cursor
                // Read once; any value is harmless (0: no limit). Measured from the visible end: a
                // batch's records, not visible yet, are not the consumer's lag.
                let lagLimit = CShmAtomics_u64_load_relaxed(slotWord(index, RingLayout.Slot.lagLimitBytes))
                let behind = state.pointee.visibleEnd &- cursor
                if lagLimit != 0 && behind <= capacity && behind >= lagLimit {
                    demote(index, generation: generation)
                } else {
                    largestLag = max(largestLag, lag)
                }
            }
        }
        return position &- largestLag
    }

    /// The gating consumer furthest behind, and its cursor (nil when no consumer gates): the one
    /// a producer on a full ring waits for.
    func slowestGatingSlot() -> (index: Int, cursor: UInt64)? {
        let position = state.pointee.position
        var slowest: (index: Int, cursor: UInt64, lag: UInt64)?
        for index in 0..<slotCount {
            guard case .gating(_, let cursor) = sampleSlot(index, position: position) else { continue }
            let lag = position &- cursor
            if slowest == nil || lag > slowest!.lag { slowest = (index, cursor, lag) }
        }
        return slowest.map { ($0.index, $0.cursor) }
    }

    /// Reads one slot: the producer's private generation and policy, the consumer's `active` and
    /// cursor, each once, consistently (a slot that changed in between is read again), and
    /// validated. A registered gating consumer whose join was validated and whose cursor lies
    /// outside [position - capacity, position] is evicted here.
    @usableFromInline
    func sampleSlot(_ index: Int, position: UInt64) -> SlotSample {
        let activeWord = slotWord(index, RingLayout.Slot.active)
        for _ in 0..<4 {
            // `active` first (seq_cst: the Dekker half, see publishLimit; acquire: a slot seen
            // active is seen with the cursor the joiner stored before it), then the private
            // generation (acquire). In this order a joiner seen active is seen with its
            // generation: the server's release store of it happened before the reply, the reply
            // before the joiner's store of `active`, and that store before this load.
            let active = CShmAtomics_u64_load_seq_cst(activeWord)
            let generation = CShmAtomics_u64_load_acquire(slotControls.generation(index))
            guard generation != 0, active == generation,
                slotControls.evicted(index).pointee != generation, slotControls.demoted(index).pointee != generation,
                // Relaxed: published with the generation (acquire above).
                CShmAtomics_u64_load_relaxed(slotControls.policy(index)) == UInt64(ConsumerPolicy.gating.rawValue)
            else { return .notGating }
            // Acquire: later loads see at least what the consumer released (partner: its release
            // store of `cursor` in `publishCursor`).
            let cursor = CShmAtomics_u64_load_acquire(slotWord(index, RingLayout.Slot.cursor))
            // Acquire: partner of the consumer's stores of `active` (a joiner retrying clears it
            // before it moves its cursor).
            guard CShmAtomics_u64_load_acquire(activeWord) == active else { continue }
            if position &- cursor > UInt64(view.capacity) {
                // Outside the window (behind by more than a capacity, or ahead of the producer).
                // A joiner that was overtaken has such a cursor for a moment: it sees the limit
                // and chooses again, so it is ignored. A consumer whose join was validated never
                // has one: its page holds a value that cannot be right.
                if CShmAtomics_u64_load_acquire(slotWord(index, RingLayout.Slot.joined)) == generation {
                    // The join may have completed after the cursor above was read: the joiner
                    // chose again in between (cleared `active`, moved its cursor, set `active`
                    // again: the re-check above cannot tell). Judge a cursor read after the join
                    // was seen. Acquire: partner, the joiner's compare-and-swap of `joined`
                    // (RingJoiner.join), which follows its store of the cursor it validated.
                    let joinedCursor = CShmAtomics_u64_load_acquire(slotWord(index, RingLayout.Slot.cursor))
                    guard position &- joinedCursor > UInt64(view.capacity) else {
                        return .gating(generation: generation, cursor: joinedCursor)
                    }
                    state.pointee.lastEviction = (
                        index, position, joinedCursor, state.pointee.visibleEnd, state.pointee.sequence,
                        state.pointee.intent
                    )
                    evict(index, generation: generation)
                }
                return .notGating
            }
            return .gating(generation: generation, cursor: cursor)
        }
        return .unstable
    }

    /// The record ending at `end` does not fit: demotes the gating consumers that hold it back
    /// and whose time lag limit has run out (counting from the first back-pressured attempt with
    /// no publish since). True if any was demoted.
    @usableFromInline
    func demoteHoldingBack(end: UInt64) -> Bool {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)  // vDSO: no system call
        let nanoseconds = UInt64(now.tv_sec) &* 1_000_000_000 &+ UInt64(now.tv_nsec)
        // The clock starts at the first refused attempt and restarts whenever a publish got
        // through since (a smaller record may fit without looking at the consumers).
        if state.pointee.blockedSince == 0 || state.pointee.published != state.pointee.blockedSincePublished {
            state.pointee.blockedSince = nanoseconds
            state.pointee.blockedSincePublished = state.pointee.published
            return false
        }
        let blocked = nanoseconds &- state.pointee.blockedSince
        let capacity = UInt64(view.capacity)
        var demoted = false
        for index in 0..<slotCount {
            // It holds this record back, and it has published messages left to read (not only
            // this batch's own, invisible records).
            guard case .gating(let generation, let cursor) = sampleSlot(index, position: state.pointee.position),
                end &- cursor > capacity, Int64(bitPattern: state.pointee.visibleEnd &- cursor) > 0
            else { continue }
            // Read once; any value is harmless (0: no limit).
            let limit = CShmAtomics_u64_load_relaxed(slotWord(index, RingLayout.Slot.lagLimitNanoseconds))
            if limit != 0 && blocked >= limit {
                demote(index, generation: generation)
                demoted = true
            }
        }
        return demoted
    }

    /// Stops gating on a consumer that exceeded its lag limit: it reads as lossy from now on.
    @usableFromInline
    func demote(_ index: Int, generation: UInt64) { stopGating(index, generation: generation, evicting: false) }

    /// Stops looking at a consumer whose control page holds a value that cannot be right.
    @usableFromInline
    func evict(_ index: Int, generation: UInt64) { stopGating(index, generation: generation, evicting: true) }

    /// Records the decision privately, counts it in the segment, and tells the consumer (the
    /// notice bit: its next poll throws `.demoted` once, or `.evicted` for good). The producer
    /// goes on at once.
    @usableFromInline
    func stopGating(_ index: Int, generation: UInt64, evicting: Bool) {
        (evicting ? slotControls.evicted(index) : slotControls.demoted(index)).pointee = generation
        let total: UInt64
        if evicting {
            state.pointee.evictions &+= 1
            total = state.pointee.evictions
        } else {
            state.pointee.demotions &+= 1
            total = state.pointee.demotions
        }
        // Relaxed: statistics.
        CShmAtomics_u64_store_relaxed(
            view.word(evicting ? RingLayout.Counters.evictions : RingLayout.Counters.demotions), total)
        notify(index, generation: generation, evicting ? RingLayout.noticeEvicted : RingLayout.noticeDemoted)
    }

    @usableFromInline
    func notify(_ index: Int, generation: UInt64, _ bit: UInt64) {
        // The slot may have been handed to a new consumer (a fresh page) since it was sampled:
        // tell only the page that carries this generation.
        guard CShmAtomics_u64_load_acquire(slotWord(index, RingLayout.Slot.generation)) == generation else { return }
        let word = slotWord(index, RingLayout.Slot.notice)
        // The notice names its generation: if a new holder's page arrived in between all the
        // same, its consumer ignores a notice that is not for it.
        let current = CShmAtomics_u64_load_relaxed(word)
        let mine =
            RingLayout.noticeGeneration(current) == RingLayout.noticeGeneration(generation << 2)
            ? current : generation << 2
        // Release: pairs with the consumer's acquire load of the notice in `poll`. The producer's
        // decision is already made (its private record); a consumer that rewrites its notice
        // fools only itself.
        CShmAtomics_u64_store_release(word, mine | bit)
    }
}
