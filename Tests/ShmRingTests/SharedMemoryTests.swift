import CShmLinux
import SystemPackage
import Testing

@testable import ShmRing

#if canImport(Glibc)
import Glibc
#endif

/// A key no other test uses.
func uniqueKey(_ name: String = #function) -> String {
    let base = name.prefix { $0.isLetter || $0.isNumber }.prefix(40)
    return "t-\(base)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
}

/// Expects `body` to throw a `SharedMemoryError` with `code`, and returns it.
@discardableResult
func expectError(
    _ code: SharedMemoryError.Code, sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void
) -> SharedMemoryError? {
    do {
        try body()
        Issue.record("expected \(code), nothing was thrown", sourceLocation: sourceLocation)
    } catch let error as SharedMemoryError {
        #expect(error.code == code, "\(error)", sourceLocation: sourceLocation)
        return error
    } catch {
        Issue.record("expected SharedMemoryError \(code), got \(error)", sourceLocation: sourceLocation)
    }
    return nil
}

@Suite struct SharedMemoryTests {
    @Test func createAttachWriteRead() throws {
        let key = uniqueKey()
        let creator = SharedMemory(key: key)
        try creator.create(size: 1000)
        #expect(creator.isAttached && creator.isCreator && creator.size == 1000)
        try creator.withUnsafeMutableBytes { bytes in
            #expect(bytes.count == 1000)
            #expect(bytes.allSatisfy { $0 == 0 }, "a new segment is zeroed")
            bytes.storeBytes(of: 0xfeed, toByteOffset: 992, as: UInt64.self)
        }
        let attacher = SharedMemory(key: key)
        try attacher.attach()
        #expect(attacher.size == 1000 && !attacher.isCreator)
        #expect(attacher.segmentID == creator.segmentID)
        #expect(attacher.creatorPID == getpid())
        #expect(try attacher.withUnsafeBytes { $0.load(fromByteOffset: 992, as: UInt64.self) } == 0xfeed)
        try attacher.withUnsafeMutableBytes { $0[0] = 5 }
        #expect(creator.data?.load(as: UInt8.self) == 5)
        #expect(attacher.detach() && !attacher.isAttached && attacher.size == 0)
        #expect(!attacher.detach(), "detaching twice is harmless")
    }

    @Test func keysOutsideTheGrammarAreKeyErrors() {
        for key in ["", "a/b", "has space", "ключ", String(repeating: "k", count: 101), "nul\0", "a:b"] {
            expectError(.keyError) { try SharedMemory(key: key).create(size: 10) }
            expectError(.keyError) { try SharedMemory(key: key).attach() }
        }
        // The longest key is fine, and so is every character of the grammar.
        let unique = uniqueKey()
        let longest = SharedMemory(key: String(repeating: "k", count: 100 - unique.count) + unique)
        #expect(longest.key.utf8.count == 100)
        #expect(throws: Never.self) { try longest.create(size: 10) }
        let everyCharacter = SharedMemory(key: "AZaz09._-" + uniqueKey())
        #expect(throws: Never.self) { try everyCharacter.create(size: 10) }
    }

    @Test(arguments: [0, -1, SharedMemory.maximumSize + 1, Int.max])
    func sizesOutOfRangeAreInvalidSize(size: Int) {
        let error = expectError(.invalidSize) { try SharedMemory(key: uniqueKey()).create(size: size) }
        #expect(error?.message.contains("\(size)") == true)
    }

    @Test func aSizeAboveAvailableMemoryIsOutOfResources() {
        let budget = MemoryBudget.current()
        let size = min(SharedMemory.maximumSize, budget.available.multipliedReportingOverflow(by: 2).partialValue)
        let error = expectError(.outOfResources) { try SharedMemory(key: uniqueKey()).create(size: size) }
        #expect(error?.message.contains("not enough memory") == true)
    }

    @Test func createOnALiveKeyIsAlreadyExists() throws {
        let key = uniqueKey()
        let first = SharedMemory(key: key)
        try first.create(size: 10)
        expectError(.alreadyExists) { try SharedMemory(key: key).create(size: 10) }
        expectError(.alreadyAttached) { try first.create(size: 10) }
        expectError(.alreadyAttached) { try first.attach() }
    }

    @Test func attachWhereNobodyServesIsNotFound() {
        expectError(.notFound) { try SharedMemory(key: uniqueKey()).attach() }
    }

    @Test func detachedAccessIsNotAttached() throws {
        let memory = SharedMemory(key: uniqueKey())
        expectError(.notAttached) { try memory.withUnsafeBytes { _ in } }
        expectError(.notAttached) { try memory.withUnsafeMutableBytes { _ in } }
        expectError(.notAttached) { _ = try memory.lock() }
        #expect(memory.data == nil && memory.segmentID == nil && !memory.isCreatorAttached)
    }

    @Test func lockMisuseIsLockError() throws {
        let memory = SharedMemory(key: uniqueKey())
        try memory.create(size: 10)
        expectError(.lockError) { try memory.unlock() }
        expectError(.lockError) { try memory.markRepaired() }
        #expect(try memory.lock() == .acquired)
        expectError(.lockError) { _ = try memory.lock() }
        try memory.unlock()
        #expect(try memory.withLock { $0 } == .acquired)
        #expect(try memory.tryLock() == .acquired)
        try memory.unlock()
        #expect(try memory.lock(timeout: .seconds(1)) == .acquired)
        try memory.unlock()
    }

    @Test func detachRefusesWhileThisProcessHoldsTheLock() throws {
        let key = uniqueKey()
        let creator = SharedMemory(key: key)
        try creator.create(size: 10)
        #expect(try creator.lock() == .acquired)
        #expect(!creator.detach(), "refused: the lock is held")
        #expect(creator.isAttached)
        try creator.unlock()
        #expect(creator.detach())
    }

    @Test func anAttacherGoingAwayWithTheLockReleasesIt() throws {
        let key = uniqueKey()
        let creator = SharedMemory(key: key)
        try creator.create(size: 10)
        do {
            let attacher = SharedMemory(key: key)
            try attacher.attach()
            #expect(try attacher.lock() == .acquired)
        }  // deinit with the lock held by this thread: unlocked, then detached
        #expect(try creator.tryLock() == .acquired, "not left locked, and not reported as a death")
        try creator.unlock()
    }

    @Test func readOnlyAttachmentOfAnAttachersSegment() throws {
        let key = uniqueKey()
        let creator = SharedMemory(key: key)
        try creator.create(size: 4096)
        try creator.withUnsafeMutableBytes { $0[1] = 11 }
        let reader = SharedMemory(key: key)
        try reader.attach(mode: .readOnly)
        #expect(reader.accessMode == .readOnly)
        #expect(try reader.withUnsafeBytes { $0[1] } == 11)
        expectError(.permissionDenied) { try reader.withUnsafeMutableBytes { _ in } }
        // Mapped through a read-only descriptor: the mapping cannot be made writable.
        #expect(mprotect(reader.data!, 4096, PROT_READ | PROT_WRITE) == -1 && errno == EACCES)
        // A read-only attacher can still lock (the lock lives in its own read-write memfd).
        #expect(try reader.lock() == .acquired)
        try reader.unlock()
    }

    @Test func creatorOnlySegmentsRefuseWritersAndCannotBeMappedWritable() throws {
        let key = uniqueKey()
        var policy = AccessPolicy()
        policy.writers = .creatorOnly
        let creator = SharedMemory(key: key)
        try creator.create(size: 4096, policy: policy)
        try creator.withUnsafeMutableBytes { $0[0] = 3 }  // the creator's mapping still writes
        let error = expectError(.permissionDenied) { try SharedMemory(key: key).attach(mode: .readWrite) }
        #expect(error?.message.contains("only the creator writes") == true)
        let reader = SharedMemory(key: key)
        try reader.attach(mode: .readOnly)
        #expect(try reader.withUnsafeBytes { $0[0] } == 3)
        // Reopening the attacher's descriptor read-write through /proc/self/fd works, but no
        // writable mapping can come of it (F_SEAL_FUTURE_WRITE).
        let descriptor = try #require(reader.dataDescriptor)
        let reopened = try descriptor.reopen(.readWrite)
        defer { reopened.closeIgnoringErrors() }
        let address = mmap(nil, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, reopened.rawValue, 0)
        #expect(address == MAP_FAILED && errno == EPERM)
    }

    @Test func afterTheCreatorDetachesAttachersKeepTheirMemoryAndTheKeyIsFree() throws {
        let key = uniqueKey()
        let creator = SharedMemory(key: key)
        try creator.create(size: 64)
        try creator.withUnsafeMutableBytes { $0[0] = 77 }
        let firstID = creator.segmentID
        let attacher = SharedMemory(key: key)
        try attacher.attach()
        #expect(attacher.isCreatorAttached)
        creator.detach()
        // The hang-up of the rendezvous connection is how an attacher learns it; the server
        // closes every connection before `detach` returns.
        #expect(!attacher.isCreatorAttached)
        #expect(try attacher.withUnsafeBytes { $0[0] } == 77, "the attacher keeps its memory")
        expectError(.notFound) { try SharedMemory(key: key).attach() }
        let next = SharedMemory(key: key)
        try next.create(size: 64)
        #expect(next.segmentID != firstID, "a new create is a new segment")
        #expect(try next.withUnsafeBytes { $0[0] } == 0)
    }

    @Test func usersOutsideThePolicyArePermissionDenied() throws {
        let key = uniqueKey()
        var policy = AccessPolicy()
        policy.allowedUsers = [geteuid() &+ 12345]  // not us
        let creator = SharedMemory(key: key)
        try creator.create(size: 10, policy: policy)
        expectError(.permissionDenied) { try SharedMemory(key: key).attach() }
        // Admitted through a group instead.
        policy.allowedGroups = [getegid()]
        let admitted = SharedMemory(key: uniqueKey())
        try admitted.create(size: 10, policy: policy)
        let attacher = SharedMemory(key: admitted.key)
        #expect(throws: Never.self) { try attacher.attach() }
    }

    @Test func anAttacherRefusesACreatorItDoesNotTrust() throws {
        let key = uniqueKey()
        let creator = SharedMemory(key: key)
        try creator.create(size: 10)
        let attacher = SharedMemory(key: key)
        attacher.trustedCreators = [geteuid() &+ 1]
        let error = expectError(.permissionDenied) { try attacher.attach() }
        #expect(error?.message.contains("not a trusted creator") == true)
        #expect(creator.serverStatistics?.served == 0, "the client hung up before sending its request")
    }

    @Test func directoryNamespaceCreatesAttachesAndRemoves() throws {
        let directory = "/tmp/shmring-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        #expect(mkdir(directory, 0o700) == 0)
        defer { rmdir(directory) }
        let key = "dir-key"
        let creator = SharedMemory(key: key, namespace: .directory(directory))
        try creator.create(size: 32)
        #expect(access("\(directory)/\(key).sock", F_OK) == 0)
        expectError(.alreadyExists) { try SharedMemory(key: key, namespace: .directory(directory)).create(size: 32) }
        expectError(.alreadyExists) { try SharedMemory.remove(key: key, namespace: .directory(directory)) }
        let attacher = SharedMemory(key: key, namespace: .directory(directory))
        try attacher.attach()
        #expect(attacher.segmentID == creator.segmentID)
        creator.detach()
        #expect(access("\(directory)/\(key).sock", F_OK) != 0, "detach removes the socket file")
        #expect(access("\(directory)/\(key).lock", F_OK) != 0, "and the lock file")
        try SharedMemory.remove(key: key, namespace: .directory(directory))  // harmless now
    }

    @Test func removeIsHarmlessInTheAbstractNamespaceAndRefusesALiveCreator() throws {
        let key = uniqueKey()
        try SharedMemory.remove(key: key)
        let creator = SharedMemory(key: key)
        try creator.create(size: 10)
        expectError(.alreadyExists) { try SharedMemory.remove(key: key) }
        expectError(.keyError) { try SharedMemory.remove(key: "bad/key") }
    }
}
