/// The segment's robust lock (docs/shared-memory.md): it survives its holder's death, which the
/// next holder learns from `.previousOwnerDied`.
extension SharedMemory {
    /// Waits for the segment's lock.
    ///
    /// - Returns: `.acquired`, or `.previousOwnerDied` when a holder died with the lock and the data
    ///   has not been declared repaired (`markRepaired()`) since.
    /// - Throws: `.notAttached`, `.lockError` (this thread holds it already).
    @available(*, noasync, message: "the lock is owned by a thread; an async task may resume on another")
    public func lock() throws(SharedMemoryError) -> LockOutcome {
        let lock = try attachedLock()
        do { return try lock.lock() } catch { throw SharedMemoryError(error, key: key) }
    }

    /// Takes the lock if it is free; nil if another thread or process holds it.
    @available(*, noasync, message: "the lock is owned by a thread; an async task may resume on another")
    public func tryLock() throws(SharedMemoryError) -> LockOutcome? {
        let lock = try attachedLock()
        do { return try lock.tryLock() } catch { throw SharedMemoryError(error, key: key) }
    }

    /// Waits for the lock at most `timeout`; nil if the time ran out.
    @available(*, noasync, message: "the lock is owned by a thread; an async task may resume on another")
    public func lock(timeout: Duration) throws(SharedMemoryError) -> LockOutcome? {
        let lock = try attachedLock()
        do { return try lock.lock(timeout: timeout) } catch { throw SharedMemoryError(error, key: key) }
    }

    /// Releases the lock.
    ///
    /// - Throws: `.lockError` if the calling thread does not hold it; `.notAttached`.
    @available(*, noasync, message: "the lock is owned by a thread; an async task may resume on another")
    public func unlock() throws(SharedMemoryError) {
        let lock = try attachedLock()
        do { try lock.unlock() } catch { throw SharedMemoryError(error, key: key) }
    }

    /// Declares the data repaired after `.previousOwnerDied`; call it holding the lock.
    @available(*, noasync, message: "the lock is owned by a thread; an async task may resume on another")
    public func markRepaired() throws(SharedMemoryError) {
        let lock = try attachedLock()
        do { try lock.markRepaired() } catch { throw SharedMemoryError(error, key: key) }
    }

    /// Runs `body` holding the lock and releases it afterwards, also when `body` throws. `body`
    /// gets the outcome so that it can repair the data after `.previousOwnerDied`.
    @available(*, noasync, message: "the lock is owned by a thread; an async task may resume on another")
    public func withLock<R>(_ body: (LockOutcome) throws -> R) throws -> R {
        let lock = try attachedLock()
        do {
            return try lock.withLock(body)
        } catch let error as LockError {
            throw SharedMemoryError(error, key: key)
        }
    }
}
