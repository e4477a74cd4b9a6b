import CShmLinux
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A memfd-backed shared-memory segment, mapped into this process.
///
/// The building block under both public layers (`SharedMemory` and the ring). A segment is
/// created once, sized once and reserved with `fallocate` (so no later store can SIGBUS), sealed
/// against growing and shrinking, and mapped with `MAP_POPULATE` (so first-touch faults do not
/// land in a measured path). Its memory lives while any process holds its descriptor or a
/// mapping, and the kernel frees it when the last one goes, crash or not.
///
/// Sizes are the bytes requested; the mapping is rounded up to whole pages internally.
///
/// A `Segment` owns its descriptor and its mapping: `close()` unmaps and closes at a point the
/// caller chooses, and `deinit` does it otherwise. Not thread-safe for `close()`: the owner
/// decides when nothing else uses the memory any more.
package final class Segment {
    /// Seals a creator may apply (`F_SEAL_SEAL` is always added last, by `create`).
    package struct Seals: OptionSet, Sendable, Hashable {
        package let rawValue: Int32
        package init(rawValue: Int32) { self.rawValue = rawValue }

        /// The file cannot grow (`F_SEAL_GROW`). Always applied by `create`.
        package static let grow = Seals(rawValue: CShmLinux_F_SEAL_GROW)
        /// The file cannot shrink (`F_SEAL_SHRINK`), so no mapping can SIGBUS. Always applied.
        package static let shrink = Seals(rawValue: CShmLinux_F_SEAL_SHRINK)
        /// No writes at all, not even through existing mappings (`F_SEAL_WRITE`). Fails while a
        /// writable mapping exists.
        package static let write = Seals(rawValue: CShmLinux_F_SEAL_WRITE)
        /// No new writable mapping and no `write(2)`, for anyone, root included; mappings made
        /// before the seal keep working (`F_SEAL_FUTURE_WRITE`). This is how a creator-only
        /// writer makes read-only kernel-enforced for every attacher.
        package static let futureWrite = Seals(rawValue: CShmLinux_F_SEAL_FUTURE_WRITE)
        /// No more seals (`F_SEAL_SEAL`).
        package static let seal = Seals(rawValue: CShmLinux_F_SEAL_SEAL)
    }

    /// How this process maps the segment.
    package enum Access: Sendable, Equatable {
        case readOnly
        case readWrite
    }

    /// The memfd.
    package let descriptor: FileDescriptor
    /// The size requested at creation, in bytes.
    package let size: Int
    /// The size of the mapping: `size` rounded up to whole pages.
    package let mappedSize: Int
    /// How this process mapped it.
    package let access: Access
    private var base: UnsafeMutableRawPointer?
    /// False for a mapping placed over a caller's reserved range (`create(at:)`): the range is the
    /// caller's, and the next segment placed there replaces this one's pages.
    private let unmapsOnClose: Bool

    private init(
        descriptor: FileDescriptor, size: Int, mappedSize: Int, access: Access, base: UnsafeMutableRawPointer,
        unmapsOnClose: Bool = true
    ) {
        self.descriptor = descriptor
        self.size = size
        self.mappedSize = mappedSize
        self.access = access
        self.base = base
        self.unmapsOnClose = unmapsOnClose
    }

    deinit { close() }

    /// The largest segment `create` accepts: 1 TiB (also the limit documented for `SharedMemory`).
    package static let maximumSize = 1 << 40

    /// The system's page size.
    package static let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))

    /// Creates, reserves, maps and seals a new memfd segment.
    ///
    /// In order: checks `size` against the memory budget (`MemoryBudget`; segments of 64 KiB or
    /// less skip it), `memfd_create`,
    /// `fallocate` of the rounded size, `mmap` with `MAP_POPULATE`, then the seals: grow and shrink
    /// always, the caller's `seals` next, and `F_SEAL_SEAL` last, so that nothing can be added
    /// afterwards. `futureWrite` is applied after the creator's own mapping, which keeps working.
    ///
    /// - Parameters:
    ///   - name: the memfd's name, shown in `/proc/PID/fd` and `/proc/PID/maps` (`memfd:NAME`).
    ///   - size: bytes, 1 ... `maximumSize`.
    ///   - seals: seals to add besides grow, shrink and seal.
    ///   - access: how the creator maps it.
    ///   - fixedAddress: map it here (`MAP_FIXED`), replacing whatever the caller had mapped in
    ///     that page-aligned range, which the caller owns: `close()` then leaves the pages mapped
    ///     (the next segment created at the address replaces them atomically for every thread).
    /// - Throws: `SegmentError`.
    package static func create(
        name: String, size: Int, seals: Seals = [], access: Access = .readWrite,
        at fixedAddress: UnsafeMutableRawPointer? = nil
    ) throws(SegmentError) -> Segment {
        guard size > 0, size <= maximumSize else { throw .invalidSize(size, maximum: maximumSize) }
        let mappedSize = roundUpToPage(size)
        // The memory budget (/proc and cgroup files: a dozen system calls) for anything bigger
        // than a few pages; a ring's slot pages and doorbell are not worth reading it for, and
        // a failure to allocate them is still `.outOfResources` (below).
        if mappedSize > smallSegmentSize {
            let budget = MemoryBudget.current()
            guard mappedSize <= budget.available else {
                throw .outOfResources(requested: mappedSize, available: budget.available, limit: budget.source)
            }
        }
        // RLIMIT_FSIZE applies to memfds: past it, fallocate does fail with EFBIG, but the kernel
        // also sends SIGXFSZ, whose default action ends the process. Answer before that.
        // (rlim_t.max is RLIM_INFINITY, a macro Swift imports wrongly.)
        var fileSizeLimit = rlimit()
        if getrlimit(__rlimit_resource_t(RLIMIT_FSIZE.rawValue), &fileSizeLimit) == 0,
            fileSizeLimit.rlim_cur != rlim_t.max, UInt64(mappedSize) > UInt64(fileSizeLimit.rlim_cur)
        {
            throw .fileSizeLimit(requested: mappedSize, limit: Int(clamping: fileSizeLimit.rlim_cur))
        }
        let flags = UInt32(CShmLinux_MFD_CLOEXEC | CShmLinux_MFD_ALLOW_SEALING)
        let fd: Int32
        do {
            fd = try systemCall("memfd_create") { CShmLinux_memfd_create(name, flags) }
        } catch {
            throw .system(error)
        }
        let descriptor = FileDescriptor(rawValue: fd)
        var segment: Segment?
        do throws(SystemCallError) {
            _ = try systemCall("fallocate") { CShmLinux_fallocate(fd, 0, off_t(mappedSize)) }
            segment = try map(descriptor: descriptor, size: size, access: access, at: fixedAddress)
            // The caller's seals with grow and shrink, then F_SEAL_SEAL on its own, last.
            let first = seals.union([.grow, .shrink]).subtracting(.seal)
            _ = try systemCall("fcntl(F_ADD_SEALS)") { CShmLinux_add_seals(fd, first.rawValue) }
            _ = try systemCall("fcntl(F_ADD_SEALS, F_SEAL_SEAL)") { CShmLinux_add_seals(fd, Seals.seal.rawValue) }
            return segment!
        } catch {
            // Once mapped, the segment owns the descriptor: close through it, exactly once.
            if let segment { segment.close() } else { descriptor.closeIgnoringErrors() }
            if error.errno == .noMemory || error.errno == .noSpace {
                throw .outOfResources(
                    requested: mappedSize, available: MemoryBudget.current().available, limit: error.description)
            }
            throw .system(error)
        }
    }

    /// Segments up to this size skip the memory-budget check at creation.
    static let smallSegmentSize = 64 << 10

    /// Maps an existing segment received from another process (or a second time in this one).
    ///
    /// Takes ownership of `descriptor`. A `.readOnly` mapping is made through a read-only
    /// descriptor (the given one if it is read-only, a read-only reopen otherwise), so it can never
    /// be `mprotect`ed writable. `size` must not exceed the file's size, and the file must carry
    /// `requiredSeals` (by default grow, shrink and seal: it can never shrink under the mapping).
    package static func attach(
        descriptor: FileDescriptor, size: Int, access: Access, requiredSeals: Seals = [.grow, .shrink, .seal]
    ) throws(SegmentError) -> Segment {
        guard size > 0, size <= maximumSize else {
            descriptor.closeIgnoringErrors()
            throw .invalidSize(size, maximum: maximumSize)
        }
        var status = stat()
        if fstat(descriptor.rawValue, &status) != 0 {
            let error = SystemCallError("fstat", Errno(rawValue: errno))
            descriptor.closeIgnoringErrors()
            throw .system(error)
        }
        guard status.st_mode & S_IFMT == S_IFREG else {
            descriptor.closeIgnoringErrors()
            throw .notSealed(missing: requiredSeals)
        }
        guard Int(status.st_size) >= size else {
            descriptor.closeIgnoringErrors()
            throw .tooSmall(fileSize: Int(status.st_size), requested: size)
        }
        // Without the shrink seal, whoever holds a writable descriptor could truncate the file
        // under our mapping and turn the next access into SIGBUS.
        let present = Seals(rawValue: max(0, CShmLinux_get_seals(descriptor.rawValue)))
        guard present.isSuperset(of: requiredSeals) else {
            descriptor.closeIgnoringErrors()
            throw .notSealed(missing: requiredSeals.subtracting(present))
        }
        do throws(SystemCallError) {
            return try map(descriptor: descriptor, size: size, access: access)
        } catch {
            descriptor.closeIgnoringErrors()
            throw .system(error)
        }
    }

    private static func map(
        descriptor: FileDescriptor, size: Int, access: Access, at fixedAddress: UnsafeMutableRawPointer? = nil
    ) throws(SystemCallError) -> Segment {
        let mappedSize = roundUpToPage(size)
        // A read-only mapping goes through a read-only descriptor: then the mapping lacks
        // VM_MAYWRITE and mprotect(PROT_WRITE) fails with EACCES.
        var mapThrough = descriptor
        if access == .readOnly, try descriptor.accessMode() != .readOnly {
            mapThrough = try descriptor.reopen(.readOnly)
        }
        defer { if mapThrough != descriptor { mapThrough.closeIgnoringErrors() } }
        let protection = access == .readOnly ? PROT_READ : PROT_READ | PROT_WRITE
        let flags = MAP_SHARED | MAP_POPULATE | (fixedAddress == nil ? 0 : MAP_FIXED)
        let address = mmap(fixedAddress, mappedSize, protection, flags, mapThrough.rawValue, 0)
        guard let address, address != MAP_FAILED else {
            throw SystemCallError("mmap", Errno(rawValue: errno))
        }
        return Segment(
            descriptor: descriptor, size: size, mappedSize: mappedSize, access: access, base: address,
            unmapsOnClose: fixedAddress == nil)
    }

    /// The first byte of the mapping, or nil after `close()`.
    ///
    /// Valid until `close()`; a `.readOnly` segment's memory must not be written (the process
    /// gets SIGSEGV).
    package var baseAddress: UnsafeMutableRawPointer? { base }

    /// The mapping as raw bytes (exactly `size` of them), or nil after `close()`.
    package var bytes: UnsafeMutableRawBufferPointer? {
        base.map { UnsafeMutableRawBufferPointer(start: $0, count: size) }
    }

    /// Whether `close()` has run.
    package var isClosed: Bool { base == nil }

    /// The seals on the memfd now.
    package func seals() throws(SystemCallError) -> Seals {
        Seals(rawValue: try systemCall("fcntl(F_GET_SEALS)") { CShmLinux_get_seals(descriptor.rawValue) })
    }

    /// A new read-only descriptor of the same memfd, for handing to a reader.
    package func readOnlyDescriptor() throws(SystemCallError) -> FileDescriptor {
        try descriptor.reopen(.readOnly)
    }

    /// Unmaps and closes. Idempotent; after it, `baseAddress` and `bytes` are nil.
    package func close() {
        guard let base else { return }
        if unmapsOnClose { munmap(base, mappedSize) }
        self.base = nil
        descriptor.closeIgnoringErrors()
    }

    static func roundUpToPage(_ size: Int) -> Int {
        let page = pageSize
        return (size + page - 1) / page * page
    }
}

/// Why a segment could not be created or mapped.
package enum SegmentError: Error, Equatable, CustomStringConvertible {
    /// The size is zero, negative or above the maximum.
    case invalidSize(Int, maximum: Int)
    /// The memory the segment needs is not available (MemAvailable, a cgroup's limit, or the
    /// kernel said ENOMEM/ENOSPC). Answered before anything is reserved, so the OOM killer is never
    /// involved.
    case outOfResources(requested: Int, available: Int, limit: String)
    /// The file received is smaller than the size announced for it.
    case tooSmall(fileSize: Int, requested: Int)
    /// The size is above the process's RLIMIT_FSIZE (which would otherwise raise SIGXFSZ).
    case fileSizeLimit(requested: Int, limit: Int)
    /// The received file is not a regular file carrying the seals a safe mapping needs.
    case notSealed(missing: Segment.Seals)
    /// A system call failed (EMFILE, ...).
    case system(SystemCallError)

    package var description: String {
        switch self {
        case .invalidSize(let size, let maximum):
            "invalid size \(size): a segment holds 1 to \(maximum) bytes"
        case .outOfResources(let requested, let available, let limit):
            "not enough memory for \(requested) bytes: \(available) available (\(limit))"
        case .tooSmall(let fileSize, let requested):
            "the segment's file holds \(fileSize) bytes, fewer than the \(requested) announced"
        case .fileSizeLimit(let requested, let limit):
            "\(requested) bytes exceed the file size limit of \(limit) bytes (RLIMIT_FSIZE, EFBIG)"
        case .notSealed(let missing):
            "the segment's file is not sealed safely (missing seals 0x\(String(missing.rawValue, radix: 16)))"
        case .system(let error):
            error.description
        }
    }
}
