import CShmLinux
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

extension SharedMemory {
    /// The creator's answer to each request, run on the server thread. Captures only plain values
    /// (descriptor numbers stay valid until `detach` stops the server, before closing them).
    static func handler(
        data: Int32, lock: Int32, size: Int, mappedSize: Int, policy: AccessPolicy, segmentID: SegmentID
    ) -> RendezvousServer.Handler {
        let creatorPID = getpid()
        let creatorUID = geteuid()
        return { request, credentials, _ in
            var reply = RendezvousProtocol.Reply(
                status: .ok, segmentKind: .sharedMemory, creatorPID: creatorPID, creatorUID: creatorUID,
                segmentID: segmentID, size: UInt64(size), mappedSize: UInt64(mappedSize))
            if policy.writers == .creatorOnly { reply.flags.insert(.creatorOnlyWriters) }
            var response = RendezvousServer.Response(reply: reply)
            guard policy.admits(credentials) else {
                response.reply.status = .permissionDenied
                return response
            }
            switch request.kind {
            case .observe:
                return response
            case .attachRingConsumer:
                response.reply.status = .wrongKind
                return response
            case .attachSegment:
                break
            }
            let wantsWrite = request.flags.contains(.readWrite)
            if wantsWrite && policy.writers == .creatorOnly {
                response.reply.status = .readOnlySegment
                return response
            }
            let dataDescriptor = FileDescriptor(rawValue: data)
            if wantsWrite {
                response.descriptors = [dataDescriptor]
            } else {
                do throws(SystemCallError) {
                    response.temporaryDescriptors = [try dataDescriptor.reopen(.readOnly)]
                    response.reply.flags.insert(.readOnlyDescriptor)
                } catch {
                    response.reply.status = .serverError
                    response.reply.errno = error.errno.rawValue
                    return response
                }
            }
            response.descriptors.append(FileDescriptor(rawValue: lock))
            // Roles in the order sent: descriptors, then temporaryDescriptors.
            response.reply.roles = wantsWrite ? [.data, .lock] : [.lock, .data]
            response.keepOpen = true
            return response
        }
    }
}
