import ArgumentParser
import CShmLinux
import ShmRing

#if canImport(Glibc)
import Glibc
#endif

/// `shmring shm create|info|rm KEY`: the SharedMemory layer from the shell.
struct Shm: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create, inspect or remove a shared-memory segment by key.",
        subcommands: [Create.self, Info.self, Remove.self])

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a segment under KEY and hold it until interrupted.")

        @Argument(help: "The segment's key: [A-Za-z0-9._-]{1,100}.")
        var key: String

        @Option(help: "Size in bytes: 4096, 64KiB, 16MiB.")
        var size: ByteSize

        @Flag(help: "Only this process may write (read-only is then kernel-enforced for attachers).")
        var creatorOnly = false

        @Option(help: "The key's socket directory (default: the abstract namespace).")
        var dir: String?

        func run() throws {
            // Blocked before `create` starts the server thread (which inherits the mask), and taken
            // with sigwait: no window in which the signal could be missed.
            CShmLinux_block_stop_signals()
            var policy = AccessPolicy()
            if creatorOnly { policy.writers = .creatorOnly }
            let memory = SharedMemory(key: key, namespace: namespace(dir))
            try memory.create(size: size.bytes, policy: policy)
            printError(
                "shmring shm: created \(key): \(memory.size) bytes, segment \(memory.segmentID!), "
                    + "\(creatorOnly ? "creator-only writers" : "attachers may write"); holding until interrupted")
            _ = CShmLinux_wait_stop_signal()
            memory.detach()
        }
    }

    struct Info: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show what the creator of KEY says about it.")

        @Argument(help: "The segment's key.")
        var key: String

        @Flag(help: "Print JSON.")
        var json = false

        @Option(help: "The key's socket directory (default: the abstract namespace).")
        var dir: String?

        func run() throws {
            let info = try SharedMemory.info(key: key, namespace: namespace(dir))
            if json {
                writeOut(
                    "{\"key\": \(jsonString(info.key)), \"segment_id\": \(jsonString(info.segmentID.description)), "
                        + "\"size\": \(info.size), \"creator_pid\": \(info.creatorPID), \"creator_uid\": \(info.creatorUID), "
                        + "\"creator_only_writers\": \(info.creatorOnlyWriters)}\n")
            } else {
                writeOut(
                    "segment \(info.key): \(info.size) bytes, segment id \(info.segmentID), creator pid \(info.creatorPID) "
                        + "uid \(info.creatorUID), \(info.creatorOnlyWriters ? "creator-only writers" : "attachers may write")\n"
                )
            }
        }
    }

    struct Remove: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "rm",
            abstract: "Clear what a crashed creator left of KEY (refused while a creator serves it).")

        @Argument(help: "The segment's key.")
        var key: String

        @Option(help: "The key's socket directory (default: the abstract namespace).")
        var dir: String?

        func run() throws {
            try SharedMemory.remove(key: key, namespace: namespace(dir))
            printError("shmring shm: \(key) removed (nothing of it is left)")
        }
    }
}
