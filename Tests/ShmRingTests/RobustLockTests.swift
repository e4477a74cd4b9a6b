import Testing
import SystemPackage

@testable import ShmRing

#if canImport(Glibc)
import Glibc
#endif

/// Runs `body` on a new thread and waits for it (lock ownership is per thread).
func onAnotherThread<R: Sendable>(_ body: @escaping @Sendable () -> R) -> R {
    let box = ThreadBox(body)
    var thread = pthread_t()
    let context = Unmanaged.passRetained(box as AnyObject).toOpaque()
    pthread_create(
        &thread, nil,
        { argument in
            let box = Unmanaged<AnyObject>.fromOpaque(argument!).takeRetainedValue() as! any ThreadRunnable
            box.run()
            return nil
        }, context)
    pthread_join(thread, nil)
    return box.result!
}

private protocol ThreadRunnable: AnyObject { func run() }

private final class ThreadBox<R: Sendable>: ThreadRunnable, @unchecked Sendable {
    // @unchecked Sendable: `result` is written by the thread and read after pthread_join.
    var result: R?
    let body: @Sendable () -> R
    init(_ body: @escaping @Sendable () -> R) { self.body = body }
    func run() { result = body() }
}

@Suite struct RobustLockTests {
    @Test func lockAndUnlock() throws {
        let lock = try RobustLock.create()
        #expect(try lock.lock() == .acquired)
        #expect(lock.isHeldByCurrentThread)
        try lock.unlock()
        #expect(!lock.isHeldByCurrentThread)
        #expect(try lock.withLock { outcome in outcome } == .acquired)
        #expect(!lock.isHeldByCurrentThread, "withLock unlocks")
    }

    @Test func withLockUnlocksWhenTheBodyThrows() throws {
        struct Failure: Error {}
        let lock = try RobustLock.create()
        #expect(throws: Failure.self) { try lock.withLock { _ in throw Failure() } }
        #expect(try lock.tryLock() == .acquired)
        try lock.unlock()
    }

    @Test func unlockWithoutHoldingIsNotOwner() throws {
        let lock = try RobustLock.create()
        #expect(throws: LockError.notOwner) { try lock.unlock() }
        #expect(throws: LockError.notOwner) { try lock.markRepaired() }
        #expect(try lock.lock() == .acquired, "the failed unlock did not damage the mutex")
        try lock.unlock()
    }

    @Test func unlockFromAnotherThreadIsNotOwnerAndLeavesTheLockHeld() throws {
        let lock = try RobustLock.create()
        #expect(try lock.lock() == .acquired)
        let unlocked = onAnotherThread { Result { () throws(LockError) in try lock.unlock() } }
        #expect(throws: LockError.notOwner) { try unlocked.get() }
        let busy = onAnotherThread { Result { () throws(LockError) in try lock.tryLock() } }
        #expect(try busy.get() == nil, "still held by this thread")
        try lock.unlock()
    }

    @Test func relockingIsAlreadyHeld() throws {
        let lock = try RobustLock.create()
        _ = try lock.lock()
        #expect(throws: LockError.alreadyHeld) { try lock.lock() }
        try lock.unlock()
    }

    @Test func tryLockAndTimedLockOnABusyLock() throws {
        let lock = try RobustLock.create()
        _ = try lock.lock()
        let tried = onAnotherThread { Result { () throws(LockError) in try lock.tryLock() } }
        #expect(try tried.get() == nil, "tryLock on a held lock returns nil")
        let timed = onAnotherThread { Result { () throws(LockError) in try lock.lock(timeout: .milliseconds(20)) } }
        #expect(try timed.get() == nil, "the timed lock gives up")
        try lock.unlock()
        let later = onAnotherThread {
            Result { () throws(LockError) in
                let outcome = try lock.lock(timeout: .seconds(10))
                try lock.unlock()
                return outcome
            }
        }
        #expect(try later.get() == .acquired)
    }

    @Test func aThreadThatDiesHoldingTheLockIsReportedUntilRepaired() throws {
        let lock = try RobustLock.create()
        // A thread that exits holding a robust mutex counts as a dead owner, like a process.
        _ = onAnotherThread { try? lock.lock() }
        #expect(try lock.lock() == .previousOwnerDied)
        try lock.unlock()
        #expect(try lock.lock() == .previousOwnerDied, "reported until repaired")
        try lock.markRepaired()
        try lock.unlock()
        #expect(try lock.lock() == .acquired)
        try lock.unlock()
        #expect(lock.ownerDeaths == 1)
    }

    @Test func attachRefusesAPageThatIsNotALock() throws {
        let segment = try Segment.create(name: "not-a-lock", size: RobustLock.segmentSize)
        segment.bytes![0] = 0x55
        #expect {
            try RobustLock.attach(descriptor: FileDescriptor(rawValue: dup(segment.descriptor.rawValue)))
        } throws: { error in
            if case .corrupted(let what) = error as? LockError { return what.contains("magic") }
            return false
        }
    }
}

extension MultiProcess {
    @Suite struct RobustLockAcrossProcessesTests {
        /// 4 processes × 10 000 increments under the lock = 40 000: no update lost.
        @Test func fourProcessesIncrementUnderTheLock() throws {
            let lock = try RobustLock.create()
            let data = try Segment.create(name: "counter", size: 8)
            let count = 10_000
            let peers = try (0..<4).map { _ in
                try ChildProcess(
                    TestPeer.forHeavyLoops,
                    [
                        "lock-increment", "--lock-fd", "\(ChildProcess.childDescriptor(0))",
                        "--data-fd", "\(ChildProcess.childDescriptor(1))", "--count", "\(count)",
                    ],
                    inheriting: [lock.segment.descriptor, data.descriptor])
            }
            for peer in peers {
                #expect(peer.wait(timeout: .seconds(120)) == .exited(0), "\(peer.standardError)")
                #expect(peer.results["done"] == "\(count)")
            }
            let total = try lock.withLock { _ in data.baseAddress!.load(as: UInt64.self) }
            #expect(total == 40_000)
        }

        /// A holder SIGKILLed with the lock: every locker hears of it until the data is repaired,
        /// and the lock works afterwards.
        @Test func recoveryAfterTheHolderIsKilled() throws {
            let lock = try RobustLock.create()
            let args = ["--lock-fd", "\(ChildProcess.childDescriptor(0))"]
            let holder = try ChildProcess(
                TestPeer.debug, ["lock-hold"] + args, inheriting: [lock.segment.descriptor], expectCrash: true)
            try #require(holder.waitForReady("locked"))
            #expect(holder.results["outcome"] == "acquired")
            holder.signal(SIGKILL)
            #expect(holder.wait() == .signaled(SIGKILL))

            // Another process is told, and does not repair.
            let first = try ChildProcess(TestPeer.debug, ["lock-once"] + args, inheriting: [lock.segment.descriptor])
            #expect(first.wait() == .exited(0), "\(first.standardError)")
            #expect(first.results["outcome"] == "previousOwnerDied")
            // So this one is told too, and repairs.
            #expect(try lock.lock() == .previousOwnerDied)
            try lock.markRepaired()
            try lock.unlock()
            // After the repair, everyone gets the lock plainly.
            let after = try ChildProcess(TestPeer.debug, ["lock-once"] + args, inheriting: [lock.segment.descriptor])
            #expect(after.wait() == .exited(0), "\(after.standardError)")
            #expect(after.results["outcome"] == "acquired")
            #expect(try lock.lock() == .acquired)
            try lock.unlock()
            #expect(lock.ownerDeaths == 1)
        }
    }
}
