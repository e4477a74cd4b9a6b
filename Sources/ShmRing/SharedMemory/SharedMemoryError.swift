import SystemPackage

/// Why a `SharedMemory` operation failed.
///
/// `code` is the category (Qt's `QSharedMemory::SharedMemoryError` and a few more); `message` says
/// what exactly went wrong, naming the key; `syscall` and `errno` are set when a system call failed.
public struct SharedMemoryError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The category of a failure.
    public enum Code: Sendable, Equatable, Hashable {
        /// A credential check refused: this user is not admitted by the creator's policy, the
        /// creator is not a trusted user, or read-write access was asked of a segment only its
        /// creator writes (or mutable access of a read-only attachment).
        case permissionDenied
        /// The size is not in 1 ... `SharedMemory.maximumSize`.
        case invalidSize
        /// The key does not follow `[A-Za-z0-9._-]{1,100}` (or its directory path is too long).
        case keyError
        /// A live creator serves the key already.
        case alreadyExists
        /// Nobody serves the key.
        case notFound
        /// Locking failed (unlock without holding, relock, a corrupted lock).
        case lockError
        /// Not enough memory (MemAvailable, the memory cgroup), descriptors or other resources.
        case outOfResources
        /// The operation needs an attachment and there is none.
        case notAttached
        /// `create` or `attach` on an object that is attached already.
        case alreadyAttached
        /// The creator speaks an incompatible rendezvous protocol, or serves another kind of
        /// segment (a ring).
        case incompatible
        /// Anything else: a protocol violation by the other side, an unexpected system error.
        case unknown
    }

    public var code: Code
    /// The key concerned.
    public var key: String
    /// What went wrong, for a person.
    public var message: String
    /// The system call that failed, if one did.
    public var syscall: String?
    /// What it returned, if a system call failed.
    public var errno: Errno?

    public init(_ code: Code, key: String, _ message: String, syscall: String? = nil, errno: Errno? = nil) {
        self.code = code
        self.key = key
        self.message = message
        self.syscall = syscall
        self.errno = errno
    }

    /// The message, prefixed with the key unless it starts with it already.
    public var description: String { message.hasPrefix(key + " ") ? message : "\(key): \(message)" }
}

extension SharedMemoryError {
    init(_ error: RendezvousError, key: String) {
        switch error {
        case .invalidKey(_, let why): self.init(.keyError, key: key, "invalid key: \(why)")
        case .alreadyExists(let what): self.init(.alreadyExists, key: key, what)
        case .notFound(let what): self.init(.notFound, key: key, what)
        case .permissionDenied(let what): self.init(.permissionDenied, key: key, what)
        case .readOnlySegment:
            self.init(.permissionDenied, key: key, "only the creator writes this segment: attach it .readOnly")
        case .incompatibleVersion(let what): self.init(.incompatible, key: key, what)
        case .wrongKind: self.init(.incompatible, key: key, "\(key) is a ring, not a shared-memory segment")
        case .descriptorTableFull: self.init(.outOfResources, key: key, error.description, errno: .tooManyOpenFiles)
        case .protocolViolation, .timedOut, .noFreeSlot, .gatingRefused:
            self.init(.unknown, key: key, error.description)
        case .serverError(let errno):
            let code: Code = errno == .tooManyOpenFiles || errno == .noMemory ? .outOfResources : .unknown
            self.init(code, key: key, error.description, errno: errno)
        case .system(let system): self.init(system, key: key)
        }
    }

    init(_ error: SegmentError, key: String) {
        switch error {
        case .invalidSize: self.init(.invalidSize, key: key, error.description)
        case .outOfResources: self.init(.outOfResources, key: key, error.description)
        case .fileSizeLimit: self.init(.outOfResources, key: key, error.description, errno: .fileTooLarge)
        case .tooSmall, .notSealed: self.init(.unknown, key: key, error.description)
        case .system(let system): self.init(system, key: key)
        }
    }

    init(_ error: LockError, key: String) {
        switch error {
        case .system(let system):
            self.init(.lockError, key: key, "lock: \(system)", syscall: system.syscall, errno: system.errno)
        default: self.init(.lockError, key: key, error.description)
        }
    }

    init(_ error: SystemCallError, key: String) {
        let resources: Set<Errno> = [.tooManyOpenFiles, .tooManyOpenFilesInSystem, .noMemory, .noSpace, .fileTooLarge]
        let code: Code = resources.contains(error.errno) ? .outOfResources : .unknown
        self.init(code, key: key, error.description, syscall: error.syscall, errno: error.errno)
    }
}
