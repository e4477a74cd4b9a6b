import CShmLinux
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A named shared-memory segment with the model of Qt's `QSharedMemory`, without its Unix defects.
///
/// One process `create`s a segment under a key; others `attach` to it by the same key; any of them
/// can `lock` it. Unlike POSIX or SysV shared memory:
/// - the memory is a memfd: the kernel frees it when the last process holding it goes, after
///   `kill -9` too; nothing is left behind in `/dev/shm`;
/// - the lock is robust: when its holder dies, the next locker is told `.previousOwnerDied`
///   (until someone repairs the data and calls `markRepaired()`) instead of deadlocking;
/// - the creator admits only the users of its `AccessPolicy`, and an attacher only trusts
///   creators in `trustedCreators`, so a process of another user can neither attach nor squat the
///   key to feed forged memory;
/// - with `AccessPolicy.Writers.creatorOnly`, read-only is enforced by the kernel for everyone;
/// - the memory is reserved at `create` after a check against available memory, so a full machine
///   is an `outOfResources` error, never a SIGBUS later.
///
/// The key resolves while its creator is attached: the creator's process serves it on a Unix socket
/// (docs/rendezvous.md). After the creator detaches, attachers keep their memory, and a new `create`
/// makes a new segment (a new `segmentID`).
///
/// Not `Sendable`, like its Qt model: use one object from one thread at a time. The lock is owned
/// by a thread: lock and unlock on the same thread, never from `async` code.
///
/// ```swift
/// let memory = SharedMemory(key: "prices")
/// try memory.create(size: 4096)
/// try memory.withLock { _ in
///     try memory.withUnsafeMutableBytes { $0.storeBytes(of: 42, as: UInt64.self) }
/// }
/// ```
public final class SharedMemory {
    /// The key, as given.
    public let key: String
    /// Where the key's rendezvous socket lives.
    public let namespace: KeyNamespace
    /// The effective uids an attacher accepts as creator. Default: its own effective uid.
    public var trustedCreators: Set<uid_t> = [geteuid()]
    /// How long `attach` waits for the creator's reply; for a creator, how long its server waits
    /// for a connected client's request before dropping the connection. Set before `create` or
    /// `attach`.
    public var handshakeTimeout: Duration = .seconds(5)

    /// The largest segment: 1 TiB.
    public static let maximumSize = Segment.maximumSize

    private var attachment: Attachment?

    private struct Attachment {
        var segment: Segment
        var lock: RobustLock
        var mode: AccessMode
        var segmentID: SegmentID
        var creatorPID: pid_t
        var creatorUID: uid_t
        /// The creator's server; nil for an attacher.
        var server: RendezvousServer?
        /// The attacher's liveness channel; nil for the creator.
        var connection: FileDescriptor?
    }

    /// A handle for `key` in the abstract socket namespace. Nothing happens until `create` or
    /// `attach`; a key outside the grammar is reported there (`keyError`).
    public convenience init(key: String) {
        self.init(key: key, namespace: .abstract)
    }

    /// A handle for `key` in `namespace`.
    public init(key: String, namespace: KeyNamespace) {
        self.key = key
        self.namespace = namespace
    }

    deinit {
        guard let attachment else { return }
        // Going away with the lock held: release it if this thread holds it; if another thread of
        // this process does, keep the lock page mapped for good (a small leak) rather than leave a
        // dangling entry on that thread's robust list.
        if attachment.lock.isHeldByCurrentThread { try? attachment.lock.unlock() }
        if attachment.lock.isHeldByThisProcess { RobustLock.keepMappedForever(attachment.lock) }
        self.attachment = nil
        attachment.server?.stop()
        attachment.connection?.closeIgnoringErrors()
        attachment.segment.close()
    }

    // MARK: - Create, attach, detach

    /// Creates a segment of `size` bytes under the key and attaches to it (as in Qt).
    ///
    /// The memory is zeroed, reserved and mapped before this returns. Other processes can attach
    /// from then until this object detaches.
    ///
    /// - Parameters:
    ///   - size: bytes, 1 ... `SharedMemory.maximumSize`; `size` reports exactly this.
    ///   - mode: how the creator maps it.
    ///   - policy: who may attach and who may write.
    /// - Throws: `SharedMemoryError` with `.keyError`, `.invalidSize`, `.alreadyExists` (a live
    ///   creator serves the key), `.outOfResources`, `.alreadyAttached`.
    public func create(size: Int, mode: AccessMode = .readWrite, policy: AccessPolicy = AccessPolicy())
        throws(SharedMemoryError)
    {
        guard attachment == nil else { throw SharedMemoryError(.alreadyAttached, key: key, "already attached") }
        let address = try rendezvousAddress()
        guard size > 0, size <= Self.maximumSize else {
            throw SharedMemoryError(
                .invalidSize, key: key, "invalid size \(size): a segment holds 1 to \(Self.maximumSize) bytes")
        }
        // Claim the key first: a live key is `alreadyExists` before any memory is reserved.
        var configuration = RendezvousServer.Configuration()
        configuration.handshakeTimeout = handshakeTimeout
        let server: RendezvousServer
        do {
            server = try RendezvousServer.bind(address: address, configuration: configuration)
        } catch {
            throw SharedMemoryError(error, key: key)
        }
        // From here on, a failure releases the key again (the server's deinit unbinds it).
        let segment: Segment
        let lock: RobustLock
        do {
            segment = try Segment.create(
                name: "shmring:\(key)", size: size, seals: policy.writers == .creatorOnly ? [.futureWrite] : [],
                access: mode == .readOnly ? .readOnly : .readWrite)
        } catch {
            throw SharedMemoryError(error, key: key)
        }
        do {
            lock = try RobustLock.create(name: "shmring-lock:\(key)")
        } catch {
            throw SharedMemoryError(error, key: key)
        }
        let segmentID = SegmentID.random()
        do {
            try server.start(
                admits: { [policy] in policy.admits($0) },
                handler: Self.handler(
                    data: segment.descriptor.rawValue, lock: lock.segment.descriptor.rawValue, size: size,
                    mappedSize: segment.mappedSize, policy: policy, segmentID: segmentID))
        } catch {
            throw SharedMemoryError(error, key: key)
        }
        attachment = Attachment(
            segment: segment, lock: lock, mode: mode, segmentID: segmentID, creatorPID: getpid(),
            creatorUID: geteuid(), server: server, connection: nil)
    }

    /// Attaches to the segment that a live creator serves under the key.
    ///
    /// - Parameter mode: `.readOnly` maps the data through a read-only descriptor (it cannot be
    ///   made writable with `mprotect`); on a `.creatorOnly` segment read-only is kernel-enforced.
    /// - Throws: `SharedMemoryError` with `.keyError`, `.notFound` (nobody serves the key),
    ///   `.permissionDenied` (the creator does not admit this user, the creator is not a trusted
    ///   user, or `.readWrite` on a `.creatorOnly` segment), `.incompatible`, `.outOfResources`,
    ///   `.alreadyAttached`.
    public func attach(mode: AccessMode = .readWrite) throws(SharedMemoryError) {
        guard attachment == nil else { throw SharedMemoryError(.alreadyAttached, key: key, "already attached") }
        let address = try rendezvousAddress()
        // The connection closes whatever it still holds if attaching fails.
        var connection: RendezvousConnection
        do {
            connection = try RendezvousConnection.connect(
                to: address,
                request: RendezvousProtocol.Request(
                    kind: .attachSegment, flags: mode == .readWrite ? [.readWrite] : []),
                trustedUsers: trustedCreators, timeout: handshakeTimeout)
        } catch {
            throw SharedMemoryError(error, key: key)
        }
        let reply = connection.reply
        guard reply.segmentKind == .sharedMemory else {
            throw SharedMemoryError(.incompatible, key: key, "\(key) is a ring, not a shared-memory segment")
        }
        // Exactly one data and one lock descriptor.
        guard reply.roles.count == 2, reply.roles.contains(.data), reply.roles.contains(.lock), reply.size > 0,
            reply.size <= UInt64(Self.maximumSize)
        else {
            throw SharedMemoryError(
                .unknown, key: key, "the creator's reply has roles \(reply.roles) and size \(reply.size)")
        }
        // The segment and the lock take their descriptors (and close them if they fail); the
        // attachment keeps the socket. A creator-only segment must carry F_SEAL_FUTURE_WRITE: then
        // read-only is the kernel's promise, not the creator's.
        var seals: Segment.Seals = [.grow, .shrink, .seal]
        if reply.flags.contains(.creatorOnlyWriters) { seals.insert(.futureWrite) }
        let segment: Segment
        let lock: RobustLock
        do {
            segment = try Segment.attach(
                descriptor: connection.take(.data)!, size: Int(reply.size),
                access: mode == .readOnly ? .readOnly : .readWrite, requiredSeals: seals)
        } catch {
            throw SharedMemoryError(error, key: key)
        }
        do {
            lock = try RobustLock.attach(descriptor: connection.take(.lock)!)
        } catch {
            throw SharedMemoryError(error, key: key)  // the segment unmaps itself as it ends
        }
        attachment = Attachment(
            segment: segment, lock: lock, mode: mode, segmentID: reply.segmentID, creatorPID: reply.creatorPID,
            creatorUID: reply.creatorUID, server: nil, connection: connection.takeSocket())
    }

    /// Detaches: unmaps the memory and closes every descriptor. A creator also stops serving the
    /// key (attachers keep their memory). Returns false if nothing was attached, or if a thread of
    /// this process holds the lock (unlock first, as in Qt).
    ///
    /// After it, pointers obtained from `data` are dangling.
    @discardableResult
    public func detach() -> Bool {
        guard let attachment else { return false }
        // A held lock must not be unmapped: the mutex is on its holder thread's robust list, which
        // the kernel walks when that thread exits (and glibc on the next lock), and other processes
        // would wait for it forever. Qt's detach refuses here too.
        if attachment.lock.isHeldByThisProcess { return false }
        attachment.server?.stop()
        attachment.connection?.closeIgnoringErrors()
        attachment.segment.close()
        self.attachment = nil
        return true
    }

    /// Clears what a crashed creator left of `key`: with `.directory`, a stale socket file and lock
    /// file. Refuses (`.alreadyExists`) while a live creator serves the key; harmless otherwise
    /// (the abstract namespace leaves nothing behind).
    public static func remove(key: String, namespace: KeyNamespace = .abstract) throws(SharedMemoryError) {
        let address: RendezvousAddress
        do {
            address = try RendezvousAddress(key: key, namespace: namespace)
        } catch {
            throw SharedMemoryError(error, key: key)
        }
        guard let lockPath = address.lockPath, let socketPath = address.socketPath else {
            // Abstract: the kernel frees the name with its socket. A live server is refused.
            if isServed(address) {
                throw SharedMemoryError(.alreadyExists, key: key, "a live creator serves \(key); detach it instead")
            }
            return
        }
        let lockFile: FileDescriptor
        do {
            lockFile = try RendezvousServer.acquireLockFile(lockPath, address: address)
        } catch {
            throw SharedMemoryError(error, key: key)
        }
        unlink(socketPath)
        unlink(lockPath)
        lockFile.closeIgnoringErrors()
    }

    /// What a live creator says about its segment, without attaching (an `observe` request: the
    /// same credential checks, no descriptor).
    public static func info(
        key: String, namespace: KeyNamespace = .abstract, trustedCreators: Set<uid_t> = [geteuid()]
    ) throws(SharedMemoryError) -> SharedMemoryInfo {
        let address: RendezvousAddress
        do {
            address = try RendezvousAddress(key: key, namespace: namespace)
        } catch {
            throw SharedMemoryError(error, key: key)
        }
        let reply: RendezvousProtocol.Reply
        do {
            // Only its reply is wanted: the connection closes when it ends here.
            reply = try RendezvousConnection.connect(
                to: address, request: RendezvousProtocol.Request(kind: .observe, flags: []),
                trustedUsers: trustedCreators
            ).reply
        } catch {
            throw SharedMemoryError(error, key: key)
        }
        guard reply.segmentKind == .sharedMemory else {
            throw SharedMemoryError(.incompatible, key: key, "\(key) is a ring, not a shared-memory segment")
        }
        return SharedMemoryInfo(
            key: key, segmentID: reply.segmentID, size: Int(clamping: reply.size), creatorPID: reply.creatorPID,
            creatorUID: reply.creatorUID, creatorOnlyWriters: reply.flags.contains(.creatorOnlyWriters))
    }

    private static func isServed(_ address: RendezvousAddress) -> Bool {
        guard let socket = try? RendezvousConnection.connectedSocket(to: address, timeout: .seconds(5)) else {
            return false
        }
        socket.closeIgnoringErrors()
        return true
    }

    // MARK: - State

    /// Whether this object is attached (as creator or attacher).
    public var isAttached: Bool { attachment != nil }

    /// Whether this object created the segment it is attached to.
    public var isCreator: Bool { attachment?.server != nil }

    /// The size in bytes, exactly as requested at `create`; 0 when detached.
    public var size: Int { attachment?.segment.size ?? 0 }

    /// How this object is attached; nil when detached.
    public var accessMode: AccessMode? { attachment?.mode }

    /// The random 128-bit identity of the attached segment: a new `create` under the same key
    /// makes a new one.
    public var segmentID: SegmentID? { attachment?.segmentID }

    /// The creator's process id, when attached.
    public var creatorPID: pid_t? { attachment?.creatorPID }

    /// For an attacher: whether the creator is still attached (its rendezvous connection is open).
    /// For a creator: `isAttached`. Never blocks.
    public var isCreatorAttached: Bool {
        guard let attachment else { return false }
        guard let connection = attachment.connection else { return true }
        var entry = pollfd(fd: connection.rawValue, events: CShmLinux_POLLRDHUP, revents: 0)
        return poll(&entry, 1, 0) == 0
    }

    /// The creator's rendezvous counters (for tests and `shmring shm info`); nil for an attacher.
    package var serverStatistics: RendezvousServer.Statistics? { attachment?.server?.statistics }

    /// The data memfd (for tests).
    package var dataDescriptor: FileDescriptor? { attachment?.segment.descriptor }

    // MARK: - Data

    /// The first byte of the segment, as Qt's `data()`; nil when detached.
    ///
    /// Unsafe: the pointer dangles after `detach()`, and writing through it on a `.readOnly`
    /// attachment kills the process with SIGSEGV. Prefer `withUnsafeMutableBytes`.
    public var data: UnsafeMutableRawPointer? { attachment?.segment.baseAddress }

    /// Calls `body` with the segment's bytes (exactly `size` of them).
    ///
    /// - Throws: `.notAttached` when detached, `.permissionDenied` on a `.readOnly` attachment, or
    ///   what `body` throws.
    public func withUnsafeMutableBytes<R>(_ body: (UnsafeMutableRawBufferPointer) throws -> R) throws -> R {
        guard let attachment, let bytes = attachment.segment.bytes else {
            throw SharedMemoryError(.notAttached, key: key, "not attached")
        }
        guard attachment.mode == .readWrite else {
            throw SharedMemoryError(.permissionDenied, key: key, "the segment is attached read-only")
        }
        return try body(bytes)
    }

    /// Calls `body` with the segment's bytes, read-only.
    ///
    /// - Throws: `.notAttached` when detached, or what `body` throws.
    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) throws -> R {
        guard let attachment, let bytes = attachment.segment.bytes else {
            throw SharedMemoryError(.notAttached, key: key, "not attached")
        }
        return try body(UnsafeRawBufferPointer(bytes))
    }

    /// The lock of the attachment (SharedMemory+Lock).
    func attachedLock() throws(SharedMemoryError) -> RobustLock {
        guard let attachment else { throw SharedMemoryError(.notAttached, key: key, "not attached") }
        return attachment.lock
    }

    private func rendezvousAddress() throws(SharedMemoryError) -> RendezvousAddress {
        do {
            return try RendezvousAddress(key: key, namespace: namespace)
        } catch {
            throw SharedMemoryError(error, key: key)
        }
    }
}
