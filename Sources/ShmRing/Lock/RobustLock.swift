import CShmAtomics
import CShmLinux
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// What a successful lock reports.
///
/// A plain enum without payloads, so that `==` and `switch` read naturally at call sites.
public enum LockOutcome: Equatable, Sendable {
    /// The lock is held, and the data it guards is consistent.
    case acquired
    /// The lock is held, but a process (or thread) died while holding it earlier, and the data it
    /// guarded may be half-updated. Reported to every locker until one of them repairs the data
    /// and calls `markRepaired()`.
    case previousOwnerDied
}

/// Why locking failed.
package enum LockError: Error, Equatable, CustomStringConvertible {
    /// `unlock` or `markRepaired` by a thread that does not hold the lock (EPERM).
    case notOwner
    /// `lock` by the thread that already holds it (EDEADLK): the lock is not recursive.
    case alreadyHeld
    /// The mutex is unusable (ENOTRECOVERABLE). Cannot happen through this type, which makes a
    /// dead owner's mutex consistent at once; reported if another program left it so.
    case notRecoverable
    /// The lock page does not hold an initialised lock (wrong magic or version).
    case corrupted(String)
    /// A system call failed.
    case system(SystemCallError)

    package var description: String {
        switch self {
        case .notOwner: "the calling thread does not hold the lock"
        case .alreadyHeld: "the calling thread already holds the lock (it is not recursive)"
        case .notRecoverable: "the lock is not recoverable (its owner died and it was unlocked without repair)"
        case .corrupted(let what): "the lock page is corrupted: \(what)"
        case .system(let error): error.description
        }
    }
}

/// A robust, process-shared mutex in a small memfd of its own.
///
/// Its own memfd, mapped read-write by every process that may lock, so that even processes whose
/// data mapping is read-only can lock (pthread_mutex_lock writes the mutex; through a read-only
/// mapping it dies with SIGSEGV).
///
/// When a holder dies, the kernel releases the mutex and the next locker learns it: this type makes
/// the mutex consistent at once and reports `.previousOwnerDied` to every locker until the data is
/// declared repaired with `markRepaired()`. Misuse is a typed error: unlocking a lock the calling
/// thread does not hold is `.notOwner`, relocking it is `.alreadyHeld`; the mutex is never poisoned.
///
/// Locking is thread-affine (the owner is a thread): lock and unlock on the same thread, and not
/// from `async` code, whose continuation may resume on another thread.
package final class RobustLock: @unchecked Sendable {
    // @unchecked Sendable: the only state is the mapping, which is immutable after init, and the
    // pthread mutex inside it, which is made for concurrent use.

    /// The lock page's memfd.
    package let segment: Segment
    private let page: UnsafeMutablePointer<CShmLinux_lock_page>

    /// The size of a lock segment.
    package static let segmentSize = MemoryLayout<CShmLinux_lock_page>.size

    private init(segment: Segment) {
        self.segment = segment
        self.page = segment.baseAddress!.bindMemory(to: CShmLinux_lock_page.self, capacity: 1)
    }

    /// Creates a new lock in a new memfd.
    package static func create(name: String = "shmring-lock") throws(LockError) -> RobustLock {
        let segment: Segment
        do {
            segment = try Segment.create(name: name, size: segmentSize, access: .readWrite)
        } catch {
            throw .system(Self.systemError(error))
        }
        let lock = RobustLock(segment: segment)
        let rc = CShmLinux_lock_init(lock.page)
        guard rc == 0 else { throw .system(SystemCallError("pthread_mutex_init", Errno(rawValue: rc))) }
        return lock
    }

    /// Maps a lock created by another process. Takes ownership of `descriptor`.
    package static func attach(descriptor: FileDescriptor) throws(LockError) -> RobustLock {
        let segment: Segment
        do {
            segment = try Segment.attach(descriptor: descriptor, size: segmentSize, access: .readWrite)
        } catch {
            if case .tooSmall(let fileSize, _) = error {
                throw .corrupted("the lock file holds \(fileSize) bytes, not \(segmentSize)")
            }
            throw .system(Self.systemError(error))
        }
        let lock = RobustLock(segment: segment)
        // Untrusted memory: check what the page says before using the mutex inside it.
        // Pairs with the release store of the magic in CShmLinux_lock_init.
        let magic = CShmAtomics_u64_load_acquire(&lock.page.pointee.magic)
        guard magic == CSHMLINUX_LOCK_PAGE_MAGIC else {
            throw .corrupted("magic is 0x\(String(magic, radix: 16)), not a ShmRing lock")
        }
        // The page stays writable by every admitted attacher, so this check guards against
        // accidents (a wrong descriptor), not against a hostile attacher, which could scribble
        // over the mutex at any time; admission (AccessPolicy) is the defence there.
        let version = CShmAtomics_u32_load_relaxed(&lock.page.pointee.version)
        guard version == CSHMLINUX_LOCK_PAGE_VERSION else {
            throw .corrupted("lock layout version \(version), this build knows \(CSHMLINUX_LOCK_PAGE_VERSION)")
        }
        return lock
    }

    /// Waits for the lock.
    ///
    /// - Returns: `.acquired`, or `.previousOwnerDied` while the data has not been repaired.
    /// - Throws: `LockError.alreadyHeld` if this thread holds it already.
    package func lock() throws(LockError) -> LockOutcome {
        try outcome(CShmLinux_lock_lock(page), "pthread_mutex_lock")!
    }

    /// Takes the lock if it is free.
    ///
    /// - Returns: the outcome, or nil if another thread holds the lock.
    package func tryLock() throws(LockError) -> LockOutcome? {
        try outcome(CShmLinux_lock_trylock(page), "pthread_mutex_trylock")
    }

    /// Waits for the lock for at most `timeout` (on CLOCK_MONOTONIC).
    ///
    /// - Returns: the outcome, or nil if the time ran out.
    package func lock(timeout: Duration) throws(LockError) -> LockOutcome? {
        try outcome(CShmLinux_lock_timedlock(page, timeout.clampedNanoseconds), "pthread_mutex_clocklock")
    }

    /// Releases the lock.
    ///
    /// - Throws: `LockError.notOwner` if the calling thread does not hold it.
    package func unlock() throws(LockError) {
        _ = try outcome(CShmLinux_lock_unlock(page), "pthread_mutex_unlock")
    }

    /// Declares the guarded data repaired after `.previousOwnerDied`: later lockers get `.acquired`.
    ///
    /// - Throws: `LockError.notOwner` unless the calling thread holds the lock.
    package func markRepaired() throws(LockError) {
        _ = try outcome(CShmLinux_lock_mark_repaired(page), "markRepaired")
    }

    /// Whether the calling thread holds the lock.
    package var isHeldByCurrentThread: Bool { CShmLinux_lock_is_held_by_caller(page) }

    /// Whether a thread of this process holds the lock (thread ids are unique in a pid namespace,
    /// so the owner is ours exactly when /proc/self/task lists it).
    package var isHeldByThisProcess: Bool {
        let owner = CShmLinux_lock_owner(page)
        return owner > 0 && (owner == CShmLinux_gettid() || access("/proc/self/task/\(owner)", F_OK) == 0)
    }

    /// Keeps `lock`'s page mapped until the process ends: for a lock that a thread of this process
    /// holds while its owner goes away, whose mutex is still on that thread's robust list.
    package static func keepMappedForever(_ lock: RobustLock) {
        _ = Unmanaged.passRetained(lock)
    }

    /// How many holders died holding the lock since it was created.
    package var ownerDeaths: UInt64 {
        // Relaxed: a statistic; its partner is the relaxed fetch-add in CShmLinux's lock_outcome.
        CShmAtomics_u64_load_relaxed(&page.pointee.owner_deaths)
    }

    /// Runs `body` under the lock and releases it afterwards, also when `body` throws.
    ///
    /// `body` receives the outcome, so that it can repair the data (and call `markRepaired()`)
    /// after `.previousOwnerDied`.
    package func withLock<R>(_ body: (LockOutcome) throws -> R) throws -> R {
        let outcome = try lock()
        let result: R
        do {
            result = try body(outcome)
        } catch {
            try? unlock()
            throw error
        }
        try unlock()
        return result
    }

    private func outcome(_ code: Int32, _ call: String) throws(LockError) -> LockOutcome? {
        switch code {
        case CSHMLINUX_LOCK_ACQUIRED: return .acquired
        case CSHMLINUX_LOCK_PREVIOUS_OWNER_DIED: return .previousOwnerDied
        case CSHMLINUX_LOCK_BUSY, -Errno.timedOut.rawValue: return nil
        case -Errno.notPermitted.rawValue: throw .notOwner
        case -Errno.deadlock.rawValue: throw .alreadyHeld
        case -ENOTRECOVERABLE: throw .notRecoverable
        default: throw .system(SystemCallError(call, Errno(rawValue: -code)))
        }
    }

    private static func systemError(_ error: SegmentError) -> SystemCallError {
        if case .system(let error) = error { return error }
        return SystemCallError("memfd_create", .noMemory)
    }
}
