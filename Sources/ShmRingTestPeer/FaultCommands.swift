import CShmAtomics
import CShmLinux
import ShmRing
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Peers that provoke faults: a joiner that never joins, and attachments and rings made under
/// low resource limits (docs/failure-model.md, "Resource faults").
enum FaultCommands {
    /// `--key K`: asks the producer of K for a consumer slot (the handshake alone), says
    /// "reserved" with `slot=`, and never joins. When the producer ends the connection (its join
    /// timeout), reports `joined_word=` (its slot page's `joined`, which a late join would have
    /// to swap) and says "ended"; then waits to be killed.
    static func reserve(_ options: PeerOptions) throws {
        let key = options.string("key")
        var connection = try RendezvousConnection.connect(
            to: try RendezvousAddress(key: key, namespace: .abstract),
            request: .init(kind: .attachRingConsumer, flags: []), trustedUsers: [geteuid()])
        PeerRuntime.report("slot=\(connection.reply.slot)")
        guard let page = connection.take(.consumerSlot),
            let mapped = mmap(nil, 4096, PROT_READ, MAP_SHARED, page.rawValue, 0), mapped != MAP_FAILED
        else { PeerRuntime.fail("no slot page to map") }
        let socket = connection.takeSocket()
        PeerRuntime.ready("reserved")
        var entry = pollfd(fd: socket.rawValue, events: CShmLinux_POLLRDHUP, revents: 0)
        while Glibc.poll(&entry, 1, -1) <= 0 {}
        // Acquire: partner, the server's compare-and-swap of `joinRefused` (SlotBoard.decideJoin),
        // made before it ended this connection.
        let joined = (mapped + Int(CSHMRING_SLOT_JOINED)).assumingMemoryBound(to: UInt64.self)
        PeerRuntime.report("joined_word=\(CShmAtomics_u64_load_acquire(joined))")
        PeerRuntime.ready("ended")
        PeerRuntime.parkForever()
    }

    /// `--key K --spare N`: lowers RLIMIT_NOFILE to leave N descriptors free above the highest
    /// one open, attaches a consumer of K, and reports `attached=1` or `error_code=` and `error=`,
    /// with `descriptors_before=` and `descriptors_after=` (the count in /proc/self/fd: nothing
    /// may leak from a failed attach).
    static func attachLimited(_ options: PeerOptions) throws {
        let before = PeerCommands.openDescriptorCount()
        PeerRuntime.setLimit(
            RLIMIT_NOFILE, "RLIMIT_NOFILE", to: Int(PeerCommands.highestDescriptor()) + 1 + options.int("spare"))
        do {
            let consumer = try RingConsumer(key: options.string("key"))
            PeerRuntime.report("attached=1")
            consumer.detach()
        } catch {
            PeerRuntime.report("error_code=\(error.code)")
            PeerRuntime.report("error=\(error)")
        }
        PeerRuntime.report("descriptors_before=\(before)")
        PeerRuntime.report("descriptors_after=\(PeerCommands.openDescriptorCount())")
    }

    /// `--key K --capacity C --fsize-limit BYTES`: creates a ring under RLIMIT_FSIZE and reports
    /// `created=1` or `error_code=`, `error=`, and the descriptors open before and after.
    static func createLimited(_ options: PeerOptions) throws {
        let before = PeerCommands.openDescriptorCount()
        PeerRuntime.setLimit(RLIMIT_FSIZE, "RLIMIT_FSIZE", to: options.int("fsize-limit"))
        do {
            let producer = try RingProducer(
                key: options.string("key"), configuration: RingConfiguration(capacity: options.int("capacity")))
            PeerRuntime.report("created=1")
            producer.close()
        } catch {
            PeerRuntime.report("error_code=\(error.code)")
            PeerRuntime.report("error=\(error)")
        }
        PeerRuntime.report("descriptors_before=\(before)")
        PeerRuntime.report("descriptors_after=\(PeerCommands.openDescriptorCount())")
    }
}
