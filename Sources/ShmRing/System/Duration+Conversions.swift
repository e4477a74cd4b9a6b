extension Duration {
    /// Whole nanoseconds, clamped to 0 ... Int64.max (a negative duration is 0; a huge one does
    /// not wrap).
    package var clampedNanoseconds: Int64 {
        let (seconds, attoseconds) = components
        if seconds < 0 || (seconds == 0 && attoseconds <= 0) { return 0 }
        let (whole, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        if overflow { return Int64.max }
        let (total, overflow2) = whole.addingReportingOverflow(attoseconds / 1_000_000_000)
        return overflow2 ? Int64.max : total
    }

    /// Milliseconds for `poll(2)`, rounded up so that a wait never ends before the duration, and
    /// clamped to 0 ... Int32.max.
    package var pollMilliseconds: Int32 {
        let nanoseconds = clampedNanoseconds
        return Int32(clamping: nanoseconds / 1_000_000 + (nanoseconds % 1_000_000 == 0 ? 0 : 1))
    }
}
