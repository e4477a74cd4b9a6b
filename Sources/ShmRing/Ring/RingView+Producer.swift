import CShmAtomics

/// What the producer publishes besides records, as a reader checks it: the tail and the boundary
/// index, each under a seqlock, neither trusted.
extension RingView {
    /// The producer's tail (position and sequence of the next record), read under its seqlock and
    /// checked.
    @usableFromInline
    func publishedTail() throws(ReadFailure) -> (position: UInt64, sequence: UInt64) {
        guard
            let tail = readSnapshot(
                version: RingLayout.Producer.tailVersion, position: RingLayout.Producer.tail,
                sequence: RingLayout.Producer.tailSequence)
        else { throw .tailMidUpdate }
        // A position that is not record-aligned cannot be right, and reading a commit word there
        // could run past the end of the data region.
        guard tail.position % UInt64(alignment) == 0 else { throw .tailMisaligned(tail.position) }
        return tail
    }

    /// Follows committed records and padding from the record boundary `start` to the first
    /// position where nothing is committed yet: the end of what the producer has published, as
    /// far as this reader can see (the shared tail lags it by up to 64 records or a sixteenth of
    /// the ring). At most `steps` records; it stops early at anything that cannot be right.
    @usableFromInline
    func endOfRecords(from start: (position: UInt64, sequence: UInt64), steps: Int = 4096) -> (
        position: UInt64, sequence: UInt64
    ) {
        var (position, sequence) = start
        for _ in 0..<steps {
            switch record(at: position, sequence: sequence) {
            case .committed(_, let size, _):
                position &+= UInt64(size)
                sequence = (sequence &+ 1) & RingLayout.sequenceMask
            case .padding:
                position &+= UInt64(capacity) &- (position & mask)
            case .absent, .malformed:
                return (position, sequence)
            }
        }
        return (position, sequence)
    }

    /// The oldest boundary-index entry within [floor, tail] (record-aligned), or the tail itself.
    /// Every value comes from shared memory and is checked; an entry that does not fit is skipped.
    @usableFromInline
    func oldestBoundary(notBefore floor: UInt64, tail: (position: UInt64, sequence: UInt64)) -> (
        position: UInt64, sequence: UInt64
    ) {
        // A tail before the floor cannot be right (a hostile or broken producer): resume there
        // anyway; the next validation decides.
        guard Int64(bitPattern: tail.position &- floor) >= 0 else { return tail }
        var best = tail
        for entry in 0..<RingLayout.boundaryEntries {
            let base = RingLayout.Boundary.base + entry * RingLayout.Boundary.stride
            guard
                let boundary = readSnapshot(
                    version: base + RingLayout.Boundary.version, position: base + RingLayout.Boundary.position,
                    sequence: base + RingLayout.Boundary.sequence, attempts: 4096)
            else { continue }
            // Within [floor, tail], record-aligned, and older than the best so far.
            let sinceFloor = boundary.position &- floor
            guard sinceFloor <= tail.position &- floor, boundary.position % UInt64(alignment) == 0,
                sinceFloor < best.position &- floor
            else { continue }
            best = boundary
        }
        return best
    }
}
