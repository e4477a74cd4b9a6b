import CShmAtomics

/// The reader of a lossy consumer (and of a gating one with a lag limit, which the producer may
/// stop waiting for at any moment): it reads a batch of records, then validates the whole batch
/// once against the producer's tail intent, and hands out only what was intact (docs/ring.md,
/// "Loss"). Copying by default; in place with `pollInPlace`, validating after the handler.
///
/// One pointer wide (everything it reads is in the consumer's state).
@usableFromInline @frozen
struct ValidatingReader {
    @usableFromInline let state: UnsafeMutablePointer<ConsumerState>
    @inlinable var view: RingView { state.pointee.view }
    @inlinable var slot: ConsumerSlot { state.pointee.slot }
    /// At most this many records are read between two validations.
    @usableFromInline static var batchLimit: Int { 64 }
    /// A poll that is lapped this many times in a row without handing out a message gives up
    /// with `.cannotKeepUp`.
    @usableFromInline static var lapRetries: Int { 16 }

    @usableFromInline
    init(state: UnsafeMutablePointer<ConsumerState>) { self.state = state }

    /// The copy-then-validate poll: hands out validated copies.
    @inlinable
    func pollCopying(limit: Int, _ handler: (RawSpan, RingRecordInfo) -> PollAction) throws(ReadFailure) -> Int {
        var count = 0
        defer {
            if state.pointee.position != state.pointee.publishedCursor {
                slot.publishCursor(state.pointee.position, state)
            }
        }
        let records = state.pointee.gathered.unsafelyUnwrapped
        let copies = state.pointee.buffer.unsafelyUnwrapped
        batches: while count < limit {
            let batch = try gather(maximum: min(limit - count, Self.batchLimit), copying: true) { _, _ in .continue }
            if batch.isEmpty { break }
            for index in batch {
                let record = records[index]
                let info = RingRecordInfo(
                    sequence: record.sequence, position: record.position, type: record.type,
                    missedMessages: state.pointee.pendingMissedMessages, missedBytes: state.pointee.pendingMissedBytes)
                let action = handler(
                    RawSpan(_unsafeBytes: UnsafeRawBufferPointer(start: copies + record.copy, count: record.length)),
                    info)
                if action == .leave {
                    state.pointee.position = record.position
                    state.pointee.sequence = record.sequence
                    break batches
                }
                consume(record)
                count += 1
                if action == .stop { break batches }
            }
            if state.pointee.position &- state.pointee.publishedCursor >= state.pointee.cursorInterval {
                slot.publishCursor(state.pointee.position, state)
            }
        }
        return count
    }

    /// The zero-copy variant: hands records in place, validates after the handler ran (see
    /// `RingConsumer.pollInPlace`).
    @inlinable
    func pollInPlace(limit: Int, _ handler: (RawSpan, RingRecordInfo) -> PollAction) throws(ReadFailure)
        -> InPlacePollResult
    {
        defer {
            if state.pointee.position != state.pointee.publishedCursor {
                slot.publishCursor(state.pointee.position, state)
            }
        }
        var handedOut = false
        let batch = try gather(maximum: min(max(limit, 0), Self.batchLimit), copying: false) { payload, record in
            // What was missed goes with the first record handed out (gather may have resumed
            // after a lap before handing anything out; it hands out records in one attempt only).
            // Not "the record at the consumer's position": a resumption point can hold padding,
            // and the first record then starts the next lap.
            let first = !handedOut
            handedOut = true
            let info = RingRecordInfo(
                sequence: record.sequence, position: record.position, type: record.type,
                missedMessages: first ? state.pointee.pendingMissedMessages : 0,
                missedBytes: first ? state.pointee.pendingMissedBytes : 0)
            return handler(RawSpan(_unsafeBytes: payload), info)
        }
        let records = state.pointee.gathered.unsafelyUnwrapped
        for index in batch { consume(records[index]) }
        // Everything handed out before the intact part was torn; it is counted as missed.
        return InPlacePollResult(handled: batch.upperBound, torn: batch.lowerBound)
    }

    /// A validated record was handed out and consumed.
    @inlinable @inline(__always)
    func consume(_ record: GatheredRecord) {
        state.pointee.position = record.position &+ UInt64(view.recordSize(record.length))
        state.pointee.sequence = (record.sequence &+ 1) & RingLayout.sequenceMask
        state.pointee.delivered &+= 1
        state.pointee.deliveredBytes &+= UInt64(record.length)
        state.pointee.pendingMissedMessages = 0
        state.pointee.pendingMissedBytes = 0
    }

    /// Reads up to `maximum` committed records from the consumer's position, copying each payload
    /// into the buffer (`copying`) or handing it in place to `visit`, then validates the batch
    /// once: the acquire fence, then the producer's tail intent. Whatever lies before
    /// `tail intent - capacity` may have been overwritten while it was read.
    ///
    /// Returns the indices (into `gathered`) of the intact records, in order. When the consumer
    /// was lapped, the records before them (and any before its position) are counted as missed
    /// and its position moves to the first intact record, or, if none is, to the oldest intact
    /// record the producer's boundary index knows; after `lapRetries` laps in a row with nothing
    /// intact, `.cannotKeepUp`. A record that is intact and malformed is `.malformedRecord`
    /// (after the intact records before it are handed out).
    @usableFromInline
    func gather(
        maximum: Int, copying: Bool, _ visit: (UnsafeRawBufferPointer, GatheredRecord) -> PollAction
    ) throws(ReadFailure) -> Range<Int> {
        let records = state.pointee.gathered.unsafelyUnwrapped
        let copies = state.pointee.buffer.unsafelyUnwrapped
        let (view, bufferSize) = (state.pointee.view, state.pointee.bufferSize)
        let capacity = UInt64(view.capacity)
        var laps = 0
        while true {
            var position = state.pointee.position
            var sequence = state.pointee.sequence
            var count = 0
            var used = 0
            var malformed: (length: Int, position: UInt64)?
            var stoppedByVisitor = false
            var leftByVisitor = false
            reading: while count < maximum {
                // What the producer may be rewriting at this moment is validated below, once for
                // the batch (the tail intent).
                let (length, size, type): (Int, Int, UInt32)
                switch view.record(at: position, sequence: sequence) {
                case .committed(let committedLength, let committedSize, let committedType):
                    (length, size, type) = (committedLength, committedSize, committedType)
                case .padding:
                    position &+= capacity &- (position & view.mask)
                    continue reading
                case .absent:
                    break reading  // not committed yet, or overwritten: the tail intent tells which
                case .malformed(let length):
                    malformed = (length, position)
                    break reading
                }
                let base = view.data + view.offset(position)
                let record = GatheredRecord(
                    position: position, sequence: sequence, length: length, type: type, copy: used)
                if copying {
                    let rounded = RingLayout.align(length, 8)
                    guard used &+ rounded <= bufferSize else { break }
                    // The deliberate racing copy (relaxed atomic loads, in C): validated below.
                    CShmAtomics_copy_racing(copies + used, base + RingLayout.recordHeaderSize, UInt64(length))
                    used &+= rounded
                } else {
                    let action = visit(
                        UnsafeRawBufferPointer(start: base + RingLayout.recordHeaderSize, count: length), record)
                    if action == .leave {
                        leftByVisitor = true
                        break reading
                    }
                    stoppedByVisitor = action == .stop
                }
                records[count] = record
                count += 1
                position &+= UInt64(size)
                sequence = (sequence &+ 1) & RingLayout.sequenceMask
                if stoppedByVisitor { break reading }
            }
            // Acquire fence: every load above (commit words, headers, copies) happens before the
            // tail intent is read. Partner: the producer's release fence after its tail-intent
            // store (RingWriter.reserve): a load that saw any byte of a newer lap makes this
            // load see that lap's intent.
            CShmAtomics_fence_acquire()
            let intent = CShmAtomics_u64_load_relaxed(view.word(RingLayout.Producer.tailIntent))
            let oldest = intent &- capacity  // bytes before this may have been overwritten
            // Positions only grow within a batch, so the torn records are a prefix. A record is
            // intact when its commit word named it (read first) and nothing was claimed over it
            // since (read last): even one reached through a torn length is the real one.
            var first = 0
            while first < count && Int64(bitPattern: records[first].position &- oldest) < 0 { first += 1 }
            if first == 0 && (count > 0 || Int64(bitPattern: position &- oldest) >= 0) {
                if count == 0, let malformed {
                    throw .malformedRecord(length: malformed.length, position: malformed.position)
                }
                if count == 0 && Int64(bitPattern: state.pointee.position &- oldest) >= 0 {
                    // Nothing to hand out, but intact padding may have been crossed: move past
                    // it. Otherwise `hasMessage` would see the padding for ever: waits would
                    // return at once instead of sleeping, and a consumer whose producer died
                    // just after its padding would spin without learning that it is gone.
                    state.pointee.position = position
                }
                return 0..<count
            }
            // Lapped: resume at the first intact record read, or at the oldest the index knows.
            let resume =
                first < count
                ? (position: records[first].position, sequence: records[first].sequence)
                : view.oldestBoundary(notBefore: oldest, tail: try view.publishedTail())
            // Relaxed: diagnostics for tests (where the resumption point stood), ordered by nothing.
            state.pointee.lastLapFloor = (
                oldest, CShmAtomics_u64_load_relaxed(view.word(RingLayout.Producer.tailIntent)) &- capacity
            )
            recordLoss(resumingAt: resume)
            if first < count { return first..<count }
            // Handed out in place and all torn (or the handler left the one it saw): the caller
            // discards them; the handler is not called again in this poll.
            if !copying && (count > 0 || leftByVisitor) { return count..<count }
            laps += 1
            if laps >= Self.lapRetries { throw .cannotKeepUp(laps: laps) }
        }
    }

    /// The consumer was lapped: counts what it missed (sequence and position differences) and
    /// moves it to `resume`. A gating consumer can only be lapped once demoted: if the notice
    /// arrived while this poll ran, `isDemoted` says so at once (`.demoted` is thrown by the
    /// next poll, as always).
    @usableFromInline
    func recordLoss(resumingAt resume: (position: UInt64, sequence: UInt64)) {
        let notice = slot.notice
        if notice & RingLayout.noticeDemoted != 0 && slot.isMine(notice) { state.pointee.demoted = true }
        let messages = (resume.sequence &- state.pointee.sequence) & RingLayout.sequenceMask
        let bytes = resume.position &- state.pointee.position
        state.pointee.lappedMessages &+= messages
        state.pointee.lappedBytes &+= bytes
        state.pointee.pendingMissedMessages &+= messages
        state.pointee.pendingMissedBytes &+= bytes
        state.pointee.position = resume.position
        state.pointee.sequence = resume.sequence
    }
}
