import CShmLinux
import Testing
import SystemPackage

@testable import ShmRing

#if canImport(Glibc)
import Glibc
#endif

@Suite struct SegmentTests {
    @Test func createMapsAndSealsTheRequestedSize() throws {
        let segment = try Segment.create(name: "test", size: 10_000)
        #expect(segment.size == 10_000)
        #expect(segment.mappedSize == 12_288)
        let seals = try segment.seals()
        #expect(seals.isSuperset(of: [.grow, .shrink, .seal]))
        #expect(!seals.contains(.futureWrite))
        let bytes = try #require(segment.bytes)
        bytes[0] = 1
        bytes[9_999] = 2
        // A second, read-only mapping of the same memfd sees the same memory.
        let copy = try Segment.attach(
            descriptor: FileDescriptor(rawValue: dup(segment.descriptor.rawValue)), size: 10_000, access: .readOnly)
        #expect(copy.bytes?[0] == 1 && copy.bytes?[9_999] == 2)
        // Sealed against growing and shrinking: a mapping can never SIGBUS.
        #expect(ftruncate(segment.descriptor.rawValue, 0) == -1 && errno == EPERM)
        #expect(ftruncate(segment.descriptor.rawValue, 1 << 20) == -1 && errno == EPERM)
        // F_SEAL_SEAL came last: nothing more can be added.
        #expect(CShmLinux_add_seals(segment.descriptor.rawValue, CShmLinux_F_SEAL_FUTURE_WRITE) == -1 && errno == EPERM)
    }

    @Test func closeUnmapsAndClosesOnce() throws {
        let segment = try Segment.create(name: "close-\(UInt64.random(in: 0...UInt64.max))", size: 100)
        let link = try #require(descriptorLink(segment.descriptor))
        #expect(descriptorsOpen(linkingTo: link) == 1)
        segment.close()
        #expect(segment.isClosed && segment.bytes == nil)
        #expect(descriptorsOpen(linkingTo: link) == 0)
        segment.close()  // idempotent
    }

    @Test(arguments: [0, -1, Segment.maximumSize + 1])
    func invalidSizesAreRefused(size: Int) {
        #expect(throws: SegmentError.invalidSize(size, maximum: Segment.maximumSize)) {
            try Segment.create(name: "test", size: size)
        }
    }

    @Test func aReadOnlyMappingCannotBeMadeWritable() throws {
        let segment = try Segment.create(name: "test", size: 4096)
        let readOnly = try Segment.attach(descriptor: segment.readOnlyDescriptor(), size: 4096, access: .readOnly)
        let base = try #require(readOnly.baseAddress)
        #expect(mprotect(base, 4096, PROT_READ | PROT_WRITE) == -1)
        #expect(errno == EACCES)
        // Also when the caller hands a read-write descriptor: the mapping goes through a
        // read-only reopen.
        let alsoReadOnly = try Segment.attach(
            descriptor: FileDescriptor(rawValue: dup(segment.descriptor.rawValue)), size: 4096, access: .readOnly)
        #expect(mprotect(alsoReadOnly.baseAddress!, 4096, PROT_READ | PROT_WRITE) == -1 && errno == EACCES)
    }

    @Test func futureWriteSealForbidsNewWritableMappingsButKeepsTheCreators() throws {
        let segment = try Segment.create(name: "test", size: 4096, seals: [.futureWrite])
        #expect(try segment.seals().contains(.futureWrite))
        // The creator's mapping, made before the seal, still writes.
        segment.bytes![0] = 42
        // Reopening /proc/self/fd/N read-write succeeds (a memfd inode is mode 0777) ...
        let reopened = try segment.descriptor.reopen(.readWrite)
        defer { reopened.closeIgnoringErrors() }
        #expect(try reopened.accessMode() == .readWrite)
        // ... but the kernel refuses a writable shared mapping through it, and write(2).
        let address = mmap(nil, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, reopened.rawValue, 0)
        #expect(address == MAP_FAILED && errno == EPERM)
        var byte: UInt8 = 1
        #expect(pwrite(reopened.rawValue, &byte, 1, 0) == -1 && errno == EPERM)
        // A read-only mapping through it works and sees the creator's store.
        let readOnly = mmap(nil, 4096, PROT_READ, MAP_SHARED, reopened.rawValue, 0)
        #expect(readOnly != MAP_FAILED)
        #expect(readOnly?.load(as: UInt8.self) == 42)
        // And it cannot be upgraded.
        #expect(mprotect(readOnly, 4096, PROT_READ | PROT_WRITE) == -1 && errno == EACCES)
        munmap(readOnly, 4096)
    }

    @Test func attachRefusesAFileSmallerThanAnnounced() throws {
        let segment = try Segment.create(name: "test", size: 4096)
        #expect(throws: SegmentError.tooSmall(fileSize: 4096, requested: 8192)) {
            try Segment.attach(
                descriptor: FileDescriptor(rawValue: dup(segment.descriptor.rawValue)), size: 8192, access: .readOnly)
        }
    }

    @Test func anOversizedRequestIsOutOfResourcesBeforeAnythingIsReserved() throws {
        let budget = MemoryBudget.current()
        #expect(budget.available > 0)
        // Twice what is available, but within the size limit: refused by the check, so the
        // kernel never gets the chance to OOM-kill us.
        let size = min(
            Segment.maximumSize, max(budget.available, 1 << 30).multipliedReportingOverflow(by: 2).partialValue)
        #expect {
            try Segment.create(name: "test", size: size)
        } throws: { error in
            guard case .outOfResources(let requested, let available, let limit) = error as? SegmentError else {
                return false
            }
            return requested >= size && available < requested && !limit.isEmpty
        }
    }

    @Test func theBudgetReadsMemAvailableAndTheMemoryCgroup() throws {
        let memAvailable = try #require(MemoryBudget.memAvailable())
        #expect(memAvailable > 0)
        let budget = MemoryBudget.current()
        #expect(budget.available <= memAvailable)
        // Where this process is in a memory cgroup (v1 "memory" or v2 "0::"), its limits are read,
        // and each names the file it came from.
        let membership = readSmallFile("/proc/self/cgroup") ?? ""
        let limits = MemoryBudget.cgroupLimits()
        if membership.contains(":memory:") || membership.contains("0::/") {
            #expect(!limits.isEmpty, "\(membership)")
        }
        for limit in limits { #expect(limit.source.hasPrefix("/sys/fs/cgroup")) }
    }
}

extension MultiProcess {
    @Suite struct SegmentLimitTests {
        /// A size above RLIMIT_FSIZE is a typed EFBIG error, without exhausting memory and without
        /// the SIGXFSZ that fallocate would raise (in a child, since the limit is per process).
        @Test func fileSizeLimitGivesEFBIG() throws {
            let peer = try ChildProcess(
                TestPeer.debug, ["segment-create", "--size", "\(1 << 20)", "--fsize-limit", "65536"])
            #expect(peer.wait() == .exited(0), "\(peer.standardError)")
            let results = peer.results
            // Answered before fallocate: the kernel would also raise SIGXFSZ, whose default action
            // (kept in the peer) ends the process, and the wait above would see a signal.
            #expect(results["errno"] == "\(EFBIG)", "\(results)")
            #expect(results["error"]?.contains("RLIMIT_FSIZE") == true)
        }
    }
}
