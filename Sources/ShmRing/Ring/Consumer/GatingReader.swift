import CShmAtomics

/// The in-place reader of a gating consumer without a lag limit: the producer cannot overwrite
/// what it has not read, so each message is handed to the handler where it lies, and nothing is
/// validated afterwards. The hot path of a consumer: no allocation, no system call, no lock.
///
/// One pointer wide (everything it reads is in the consumer's state), so that calling it costs
/// nothing.
@usableFromInline @frozen
struct GatingReader {
    @usableFromInline let state: UnsafeMutablePointer<ConsumerState>

    @usableFromInline
    init(state: UnsafeMutablePointer<ConsumerState>) { self.state = state }

    /// Hands up to `limit` committed messages to `handler` in place (see `RingConsumer.poll`).
    @inlinable
    func poll(limit: Int, _ handler: (RawSpan, RingRecordInfo) -> PollAction) throws(ReadFailure) -> Int {
        let view = state.pointee.view
        var position = state.pointee.position
        var sequence = state.pointee.sequence
        guard limit > 0 else { return 0 }
        // Every gating poll that moved publishes its cursor (the defer below), and the joiner
        // starts with both equal: nothing is owed to the producer when a poll starts.
        assert(position == state.pointee.publishedCursor)
        var found = view.record(at: position, sequence: sequence)
        if case .absent = found {
            // Caught up: the spinning consumer's common case, so it returns before any store to
            // shared memory and with one store to its own state.
            try countEmptyPoll(position, sequence)
            return 0
        }
        let (slot, cursorInterval) = (state.pointee.slot, state.pointee.cursorInterval)
        var count = 0
        var bytes: UInt64 = 0
        defer {
            state.pointee.position = position
            state.pointee.sequence = sequence
            state.pointee.delivered &+= UInt64(count)
            state.pointee.deliveredBytes &+= bytes
            if position != state.pointee.publishedCursor { slot.publishCursor(position, state) }
        }
        while true {
            switch found {
            case .committed(let length, let size, let type):
                let payload = UnsafeRawBufferPointer(
                    start: view.data + (view.offset(position) &+ RingLayout.recordHeaderSize), count: length)
                let action = handler(
                    RawSpan(_unsafeBytes: payload), RingRecordInfo(sequence: sequence, position: position, type: type))
                if action == .leave { return count }
                position &+= UInt64(size)
                sequence = (sequence &+ 1) & RingLayout.sequenceMask
                count += 1
                bytes &+= UInt64(length)
                if action == .stop || count == limit { return count }
                if position &- state.pointee.publishedCursor >= cursorInterval { slot.publishCursor(position, state) }
            case .padding:
                position &+= UInt64(view.capacity) &- (position & view.mask)
            case .absent:
                // Nothing handed out, but a padding record was crossed: an empty poll at the lap's start.
                if count == 0 { try countEmptyPoll(position, sequence) }
                return count
            case .malformed(let length):
                throw .malformedRecord(length: length, position: position)
            }
            found = view.record(at: position, sequence: sequence)
        }
    }

    /// Counts a poll that handed out nothing; now and then makes sure the record awaited is not
    /// one that can never come (a header rewritten under this consumer).
    @inlinable @inline(__always)
    func countEmptyPoll(_ position: UInt64, _ sequence: UInt64) throws(ReadFailure) {
        state.pointee.emptyPolls &+= 1
        if state.pointee.emptyPolls & 4095 == 0 { try checkNotStranded(position, sequence) }
    }

    /// A gating consumer waits at `position` for `sequence`. If the producer's tail says that
    /// record was committed long ago and it is still not there, the consumer was led astray (a
    /// rewritten length or commit word): `.stranded`, instead of waiting for ever while holding
    /// the producer back.
    @usableFromInline
    func checkNotStranded(_ position: UInt64, _ sequence: UInt64) throws(ReadFailure) {
        let view = state.pointee.view
        let tail = try view.publishedTail()
        let ahead = (tail.sequence &- sequence) & RingLayout.sequenceMask
        guard ahead > 0, ahead < 1 << 62 else { return }
        // The record was committed before the tail that counts it was published (the commit's
        // release, then the tail's seqlock; readSnapshot's acquire): read the word again.
        guard view.record(at: position, sequence: sequence) == .absent else { return }
        throw .stranded(position: position, sequence: sequence, tailSequence: tail.sequence)
    }
}
