import CShmAtomics
import CShmLinux
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The producer's rendezvous server: what it answers an attaching consumer and an observer.
extension RingProducer {
    static func handler(
        key: String, slots: SlotBoard, header: Segment, doorbell: Segment, capacity: Int, id: SegmentID,
        refusesGating: Bool, joinTimeout: Duration
    ) -> RendezvousServer.Handler {
        let headerDescriptor = header.descriptor.rawValue
        let doorbellDescriptor = doorbell.descriptor.rawValue
        let mappedSize = UInt64(header.mappedSize)
        // The header's data epoch (an address: the handler is Sendable; the server stops before
        // the header is unmapped).
        let dataEpochAddress = UInt(bitPattern: header.baseAddress! + RingLayout.Wake.dataEpoch)
        let sleepersAddress = UInt(bitPattern: doorbell.baseAddress! + RingLayout.Doorbell.sleepers)
        let pid = getpid()
        let uid = geteuid()
        return { request, _, _ in
            var reply = RendezvousProtocol.Reply(
                status: .ok, segmentKind: .ring, creatorPID: pid, creatorUID: uid, segmentID: id,
                size: UInt64(capacity), mappedSize: mappedSize)
            reply.layoutVersion = RingLayout.version
            reply.flags = [.creatorOnlyWriters, .readOnlyDescriptor]
            var response = RendezvousServer.Response(reply: reply)
            func fail(_ error: SystemCallError) -> RendezvousServer.Response {
                response.reply.status = .serverError
                response.reply.errno = error.errno.rawValue
                return response
            }
            switch request.kind {
            case .observe:
                // Read-only descriptors of the header and of every slot's current page (for
                // `shmring stat`).
                var descriptors: [FileDescriptor] = []
                do throws(SystemCallError) {
                    descriptors.append(try FileDescriptor(rawValue: headerDescriptor).reopen(.readOnly))
                    for slot in slots.descriptors { descriptors.append(try slot.reopen(.readOnly)) }
                } catch {
                    for descriptor in descriptors { descriptor.closeIgnoringErrors() }
                    return fail(error)
                }
                response.temporaryDescriptors = descriptors
                response.reply.roles = [.data] + Array(repeating: .consumerSlot, count: slots.count)
                return response
            case .attachSegment:
                response.reply.status = .wrongKind
                return response
            case .attachRingConsumer:
                break
            }
            let policy: ConsumerPolicy = request.flags.contains(.gating) ? .gating : .lossy
            if policy == .gating && refusesGating {
                response.reply.status = .gatingRefused
                return response
            }
            let readOnlyHeader: FileDescriptor
            let sharedDoorbell: FileDescriptor
            do throws(SystemCallError) {
                readOnlyHeader = try FileDescriptor(rawValue: headerDescriptor).reopen(.readOnly)
            } catch {
                return fail(error)
            }
            do throws(SystemCallError) {
                sharedDoorbell = try FileDescriptor(rawValue: doorbellDescriptor).reopen(.readWrite)
            } catch {
                readOnlyHeader.closeIgnoringErrors()
                return fail(error)
            }
            let handed: (slot: Int, generation: UInt64, page: FileDescriptor)?
            do throws(RingError) {
                handed = try slots.handOut(policy: policy)
            } catch {
                readOnlyHeader.closeIgnoringErrors()
                sharedDoorbell.closeIgnoringErrors()
                response.reply.status = .serverError
                response.reply.errno = error.errno?.rawValue ?? 0
                return response
            }
            guard let handed else {
                readOnlyHeader.closeIgnoringErrors()
                sharedDoorbell.closeIgnoringErrors()
                response.reply.status = .noFreeSlot
                return response
            }
            response.reply.slot = UInt32(handed.slot)
            response.reply.generation = handed.generation
            response.descriptors = [handed.page]
            response.temporaryDescriptors = [readOnlyHeader, sharedDoorbell]
            response.reply.roles = [.consumerSlot, .data, .doorbell]
            response.keepOpen = true
            // Reserved until it joins: a joiner that hangs or is stopped mid-join loses the slot
            // after the join timeout (one that dies hangs up, which reclaims it at once).
            let generation = handed.generation
            response.settled = { final in slots.decideJoin(handed.slot, generation: generation, final: final) }
            response.settleTimeout = joinTimeout
            // The consumer detached or died: the producer stops looking at its slot at once, and
            // the slot is free for the next joiner (who gets a fresh page).
            response.onClose = { consumerGone in
                // Its futex waits still counted in the doorbell's `sleepers` (a consumer killed
                // asleep never counts itself out): out, before its page goes — only when it is
                // gone (a consumer the server cut off, or the server's own stop, leaves a live
                // consumer that counts itself out). Read before `reclaim`, which hands the slot
                // to the next joiner only later, on this thread.
                let counted = consumerGone ? slots.countedWaits(handed.slot) : 0
                slots.reclaim(handed.slot)
                if counted > 0 {
                    Self.countOut(counted, from: UnsafeMutablePointer(bitPattern: sleepersAddress)!)
                }
                // The consumer may have died woken, before it passed the wake on to the other
                // sleepers (docs/wakeup.md, "Waking many"): wake them all, once. Those with
                // nothing to read look and sleep again.
                _ = CShmLinux_futex_wake(UnsafeMutablePointer(bitPattern: dataEpochAddress)!, Int32.max, false)
            }
            return response
        }
    }

    /// Takes `count` waits out of the doorbell's `sleepers`, never below 0 (the page is the
    /// consumers': its values are hints). Acq_rel compare-and-swap: consumers add and take away
    /// with locked instructions too (Sleeper.joinSleepers, leaveSleepers).
    static func countOut(_ count: UInt32, from sleepers: UnsafeMutablePointer<UInt32>) {
        var current = CShmAtomics_u32_load_relaxed(sleepers)
        while !CShmAtomics_u32_compare_exchange_acq_rel(sleepers, &current, current - min(current, count)) {}
    }
}
