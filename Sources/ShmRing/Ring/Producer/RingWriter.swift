import CShmAtomics
import CShmLinux

/// The producer's hot path: reserves a record's space, writes its header and commit word, ends a
/// batch, publishes the tail and the boundary index. No allocation, no system call, no lock;
/// when a record would pass the low watermark, the `GatingScanner` looks at the consumers.
///
/// One pointer wide (everything it needs is in the producer's state), so that calling it costs
/// nothing.
@usableFromInline @frozen
struct RingWriter {
    @usableFromInline let state: UnsafeMutablePointer<ProducerState>

    @usableFromInline
    init(state: UnsafeMutablePointer<ProducerState>) { self.state = state }

    @inlinable var view: RingView { state.pointee.view }

    /// Makes room for a record of `length` payload bytes and returns its position, or nil when
    /// back-pressured. Writes the padding record when the record does not fit before the end.
    @inlinable @inline(__always)
    func reserve(length: Int) throws(WriteRefusal) -> UInt64? {
        let view = self.view
        guard !state.pointee.busy else { throw .busy }
        guard length >= 0, length <= view.maxMessageLength else { throw .tooLong(length) }
        let size = view.recordSize(length)
        var position = state.pointee.position
        // Wrapping arithmetic: every value here is bounded by the capacity (length was checked).
        let room = view.capacity &- view.offset(position)
        let padding = size > room ? room : 0
        let end = position &+ UInt64(truncatingIfNeeded: padding &+ size)
        // Wrapping comparison: `end` is past `rescanAt` when their difference is "positive".
        if Int64(bitPattern: end &- state.pointee.rescanAt) > 0 {
            if !GatingScanner(state: state).makeRoom(until: end) { return nil }
        }
        // Lap detection (the lossy reader's half is ValidatingReader.gather): the tail intent moves
        // before any byte of the claimed space is written, and never backwards (after an abort the
        // space is reused, but what the aborted claim wrote may already have torn old records).
        // Relaxed store, then a release fence: every later store (padding, header, payload,
        // commit word) is ordered after it, so a reader that copied any of them and then runs an
        // acquire fence reads this value or a newer one. (On x86-64 the fence is a compiler
        // barrier: no instruction.)
        if Int64(bitPattern: end &- state.pointee.intent) > 0 {
            state.pointee.intent = end
            CShmAtomics_u64_store_relaxed(view.word(RingLayout.Producer.tailIntent), end)
            CShmAtomics_fence_release()
        }
        if padding > 0 {
            // The rest of the lap is empty: a padding record with the next record's sequence.
            // Relaxed: a consumer that sees it early only moves to the lap's start and waits there.
            let word = (view.data + view.offset(position)).assumingMemoryBound(to: UInt64.self)
            CShmAtomics_u64_store_relaxed(word, view.paddingWord(sequence: state.pointee.sequence))
            position &+= UInt64(padding)
            state.pointee.position = position
        }
        return position
    }

    /// Where the payload of the record reserved at `position` starts. When `length` is not a
    /// multiple of 8, first zeroes the 8-byte word that will hold the payload's last bytes, with
    /// one whole-word store: the payload is then written over it byte-wise (a copy, a typed
    /// store, a claim's body) and must not leave the high bytes of an earlier lap's word behind.
    /// (That word may have been an older record's commit word: half-overwritten, with the older
    /// header behind it, it once passed for a later record's — docs/ring.md, "Stale memory".)
    @inlinable @inline(__always)
    func payloadStart(_ position: UInt64, length: Int) -> UnsafeMutableRawPointer {
        let payload = view.data + (view.offset(position) &+ RingLayout.recordHeaderSize)
        if length & 7 != 0 {
            // Relaxed atomic: one whole 8-byte store that the compiler can neither split nor
            // merge with the copy that follows; it is published with the record (the commit's
            // release). The word lies inside the record (records are padded to 8 bytes at least).
            CShmAtomics_u64_store_relaxed((payload + (length & ~7)).assumingMemoryBound(to: UInt64.self), 0)
        }
        return payload
    }

    /// Writes the record's header and commits it (or defers the commit inside a batch).
    @inlinable @inline(__always)
    func commit(record position: UInt64, length: Int, type: UInt32) {
        let view = self.view
        let base = view.data + view.offset(position)
        // Length and type as one whole word (length at +8, type at +12, as readers load them).
        // Relaxed: published by the commit word's release store (or the batch's first).
        let header = CShmRing_header_word(UInt32(truncatingIfNeeded: length), type)
        CShmAtomics_u64_store_relaxed((base + RingLayout.Record.length).assumingMemoryBound(to: UInt64.self), header)
        let sequence = state.pointee.sequence
        let word = base.assumingMemoryBound(to: UInt64.self)
        let value = view.recordWord(sequence: sequence, length: UInt32(truncatingIfNeeded: length), type: type)
        if state.pointee.inBatch {
            if state.pointee.batchFirstWord == nil {
                state.pointee.batchFirstWord = word
                state.pointee.batchFirstValue = value
                state.pointee.batchFirstSequence = sequence
            } else {
                // Relaxed: made visible by the release store of the batch's first commit word.
                CShmAtomics_u64_store_relaxed(word, value)
            }
        } else {
            // Release: the header and payload stores above become visible no later than the
            // commit word. Partner: the consumer's acquire load of the commit word in
            // RingView.record(at:sequence:).
            CShmAtomics_u64_store_release(word, value)
            wakeSleepersIfAny()
        }
        let size = UInt64(view.recordSize(length))
        let section = position &>> state.pointee.sectionShift
        // Boundary entries only for records already visible: inside a batch, only its first
        // record's, written when the batch ends (a joiner must not start inside a batch).
        if section != state.pointee.lastSection && !state.pointee.inBatch {
            recordBoundary(position: position, sequence: sequence, section: section)
        }
        let end = position &+ size
        state.pointee.position = end
        state.pointee.sequence = (sequence &+ 1) & RingLayout.sequenceMask
        state.pointee.published &+= 1
        state.pointee.publishedBytes &+= UInt64(length)
        if !state.pointee.inBatch {
            state.pointee.visibleEnd = end
            // The shared tail and the counters are for joiners, lossy resumption and observers,
            // never for the hot path of a reader: every 64 records or a sixteenth of the ring
            // (layout 4; layout 3 published them on every commit, the most of its per-message cost).
            if state.pointee.published &- state.pointee.tailPublishedCount >= RingWriter.tailEvery
                || end &- state.pointee.tailPublishedPosition >= state.pointee.tailEveryBytes
            {
                publishTail()
            }
        }
    }

    /// The shared tail is published at least every this many records.
    @inlinable static var tailEvery: UInt64 { 64 }

    /// Publishes the tail (the end of the visible records) and the counters: every 64 records or
    /// a sixteenth of the ring, at the end of every batch, when the producer looks at its
    /// consumers, and when it closes.
    @usableFromInline
    func publishTail() {
        let view = self.view
        let tail = state.pointee.visibleEnd
        // The sequence of the record at the visible end: inside a batch the producer's own
        // sequence runs ahead of what is visible, so only publish between batches.
        guard !state.pointee.inBatch else { return }
        state.pointee.tailPublishedCount = state.pointee.published
        state.pointee.tailPublishedPosition = tail
        let version = state.pointee.tailVersion &+ 2
        state.pointee.tailVersion = version
        // Seqlock: odd version, release fence (orders it before the data), data, even version
        // with release. Partner: RingView.readSnapshot.
        CShmAtomics_u64_store_relaxed(view.word(RingLayout.Producer.tailVersion), version &- 1)
        CShmAtomics_fence_release()
        CShmAtomics_u64_store_relaxed(view.word(RingLayout.Producer.tail), tail)
        CShmAtomics_u64_store_relaxed(view.word(RingLayout.Producer.tailSequence), state.pointee.sequence)
        CShmAtomics_u64_store_release(view.word(RingLayout.Producer.tailVersion), version)
        // Relaxed: statistics, read by `stat` without ordering needs.
        CShmAtomics_u64_store_relaxed(view.word(RingLayout.Counters.publishedMessages), state.pointee.published)
        CShmAtomics_u64_store_relaxed(view.word(RingLayout.Counters.publishedBytes), state.pointee.publishedBytes)
    }

    /// Drops a reserved record: nothing was written to its commit word, and the next record reuses
    /// its space. (A padding record written for it stays: it is valid for the next record too.)
    @inlinable
    func abandon(record position: UInt64) {
        state.pointee.position = position
        // A padding record may have moved the position to the next lap: it is visible (relaxed,
        // like all padding), and the visible end moves with it.
        if !state.pointee.inBatch { state.pointee.visibleEnd = position }
    }

    @usableFromInline
    func endBatch() {
        state.pointee.inBatch = false
        if let first = state.pointee.batchFirstWord {
            // Release: every record of the batch (headers, payloads, relaxed commit words) becomes
            // visible no later than this. Partner: the consumer's acquire load in
            // RingView.record(at:sequence:).
            CShmAtomics_u64_store_release(first, state.pointee.batchFirstValue)
            state.pointee.batchFirstWord = nil
            wakeSleepersIfAny()
            // The batch's first record as a boundary entry, now that it is visible. It starts at
            // the old visible end, or at the next lap's start if a padding record came first.
            var start = state.pointee.visibleEnd
            let offset = UInt64(UInt(bitPattern: first) &- UInt(bitPattern: view.data))
            if offset != start & view.mask { start = (start | view.mask) &+ 1 }
            let section = start &>> state.pointee.sectionShift
            if section != state.pointee.lastSection {
                recordBoundary(
                    position: start, sequence: state.pointee.batchFirstSequence,
                    section: section)
            }
        }
        state.pointee.visibleEnd = state.pointee.position
        publishTail()
    }

    /// After a commit that consumers can see: wakes the consumers asleep on the current data
    /// epoch, if the doorbell says some are (docs/wakeup.md, "The protocol"). One load and a
    /// compare while nobody sleeps; no system call.
    @inlinable @inline(__always)
    func wakeSleepersIfAny() {
        // The Dekker pair with a sleeping consumer: commit word (store), then doorbell (load).
        // The consumer about to sleep announces itself, then calls membarrier, which makes this
        // thread pass a full barrier: so only the compiler must keep the load after the store.
        // Partner: RingConsumer.announceSleep (announce, membarrier, re-check). Without membarrier
        // (`symmetricFence`), a full fence here instead.
        if state.pointee.wake.symmetricFence {
            CShmAtomics_fence_seq_cst()
        } else {
            CShmAtomics_compiler_barrier()
        }
        // Relaxed: the doorbell is a hint that says whom to wake; what the wake publishes is the
        // commit word, already stored with release.
        if CShmAtomics_u32_load_relaxed(state.pointee.wake.doorbell) == state.pointee.wake.dataEpoch &+ 1 {
            wakeSleepers()
        }
    }

    /// Moves the data epoch on and wakes one consumer asleep on it, which passes the wake on to
    /// the others when there are others: one `FUTEX_WAKE` of one sleeper however many sleep.
    /// Consumers that announced this epoch and are not asleep yet find the word changed when they
    /// call `FUTEX_WAIT` (it returns at once).
    @usableFromInline @inline(never)
    func wakeSleepers() {
        let epoch = state.pointee.wake.dataEpoch &+ 1
        state.pointee.wake.dataEpoch = epoch
        // Release: nothing to publish with it (the records are), but a consumer that reads the
        // new epoch (acquire, before it announces) must also see the commit that caused it.
        // Partner: the acquire load of `data_epoch` in RingConsumer.announceSleep.
        CShmAtomics_u32_store_release(state.pointee.wake.dataEpochWord, epoch)
        // Waking many (docs/wakeup.md, "Waking many"): this thread wakes one sleeper, whatever
        // their number, and asks it to pass the wake on when the doorbell counts more than one.
        // Seq_cst fence: the epoch store (above) before the load of the count (below), against
        // a consumer's increment of the count (a locked instruction) before its futex wait reads
        // the epoch: either this load counts that consumer, or its wait sees the new epoch and
        // does not sleep. Partner: the locked increment in Sleeper.joinSleepers. (On the wake
        // path only, next to a system call.)
        CShmAtomics_fence_seq_cst()
        let doorbell = UnsafeMutableRawPointer(state.pointee.wake.doorbell) - RingLayout.Doorbell.dataWaiting
        let sleepers = (doorbell + RingLayout.Doorbell.sleepers).assumingMemoryBound(to: UInt32.self)
        var wakeCount: Int32 = 1
        if CShmAtomics_u32_load_relaxed(sleepers) > 1 {
            if epoch == 0 {
                // Once in 2^32 wakes: 0 is the token's "nothing to pass on"; wake them all here.
                wakeCount = .max
            } else {
                // Relaxed: the FUTEX_WAKE below (a system call) comes before the woken consumer's
                // look at it. Partner: the load before the compare-and-swap in Sleeper.passWakeOn.
                CShmAtomics_u32_store_relaxed(
                    (doorbell + RingLayout.Doorbell.passOn).assumingMemoryBound(to: UInt32.self), epoch)
            }
        }
        _ = CShmLinux_futex_wake(state.pointee.wake.dataEpochWord, wakeCount, false)
        state.pointee.wake.wakes &+= 1
        // Relaxed: statistics.
        CShmAtomics_u64_store_relaxed(view.word(RingLayout.Wake.wakes), state.pointee.wake.wakes)
    }

    /// Records where the first record of a new sixteenth of the ring starts (for `.oldest` joins
    /// and lossy readers' resumption).
    @usableFromInline
    func recordBoundary(position: UInt64, sequence: UInt64, section: UInt64) {
        state.pointee.lastSection = section
        let base = RingLayout.Boundary.base + Int(section & 15) * RingLayout.Boundary.stride
        let versionWord = view.word(base + RingLayout.Boundary.version)
        let version = CShmAtomics_u64_load_relaxed(versionWord) | 1
        // Seqlock, as in publishTail. Partner: RingView.readSnapshot.
        CShmAtomics_u64_store_relaxed(versionWord, version)
        CShmAtomics_fence_release()
        CShmAtomics_u64_store_relaxed(view.word(base + RingLayout.Boundary.position), position)
        CShmAtomics_u64_store_relaxed(view.word(base + RingLayout.Boundary.sequence), sequence)
        CShmAtomics_u64_store_release(versionWord, version &+ 1)
    }
}
