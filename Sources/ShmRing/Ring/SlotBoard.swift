import CShmAtomics
import CShmLinux
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The producer's private record of the consumer slots: four words per slot.
///
/// Consumer slot pages are writable by their consumers, so nothing that decides how the producer
/// treats a consumer lives there: the generation and the policy granted at attach are kept here,
/// in the producer's own memory. `generation` and `policy` are written by the rendezvous server
/// thread (`SlotBoard`) and read by the producer's thread (atomics); `evicted` and `demoted`
/// belong to the producer's thread alone.
@usableFromInline @frozen
struct SlotControls {
    @usableFromInline let words: UnsafeMutablePointer<UInt64>

    init(count: Int) {
        words = .allocate(capacity: 4 * count)
        words.initialize(repeating: 0, count: 4 * count)
    }

    /// The generation handed out with the slot; 0 while the slot is free. Unique over the ring's
    /// life (one counter for all slots), so a departed consumer's `active` never matches again.
    @inlinable func generation(_ slot: Int) -> UnsafeMutablePointer<UInt64> { words + slot &* 4 }
    /// The policy granted at attach (`ConsumerPolicy.rawValue`).
    @inlinable func policy(_ slot: Int) -> UnsafeMutablePointer<UInt64> { words + (slot &* 4 &+ 1) }
    /// The generation the producer evicted (its control page held a value that cannot be right).
    @inlinable func evicted(_ slot: Int) -> UnsafeMutablePointer<UInt64> { words + (slot &* 4 &+ 2) }
    /// The generation the producer demoted to lossy (its lag limit was exceeded).
    @inlinable func demoted(_ slot: Int) -> UnsafeMutablePointer<UInt64> { words + (slot &* 4 &+ 3) }
}

/// The consumer slots of one ring, on the producer's side.
///
/// One reserved range of `count` pages; slot `i` is the page at `base + i * 4096`. Every
/// attachment gets a **fresh** memfd, mapped over its slot's page (`MAP_FIXED` replaces the pages
/// atomically for every thread, so the producer's scans never see an unmapped address): a former
/// holder that kept its descriptor writes only its own old page, which nobody reads any more.
/// Touched on the rendezvous server's thread, except `control` (atomics, see `SlotControl`) and
/// the pages themselves.
final class SlotBoard: @unchecked Sendable {
    let base: UnsafeMutableRawPointer
    let count: Int
    let control: SlotControls
    private let key: String
    /// The memfd mapped at each slot now (observers get read-only descriptors of these).
    private var segments: [Segment]
    /// Whether the current page of a slot was handed out (the next holder gets a fresh one).
    private var handedOut: [Bool]
    private(set) var inUse: [Bool]
    private var lastGeneration: UInt64 = 0
    /// How many slots are handed out: a private futex word, changed on this thread and woken for
    /// the producer's `waitForConsumers`.
    let occupancy: UnsafeMutablePointer<UInt32>

    init(key: String, count: Int) throws(RingError) {
        let size = count * RingLayout.slotSize
        guard let region = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
            region != MAP_FAILED
        else {
            throw RingError(
                .outOfResources, key: key, "cannot reserve \(size) bytes for consumer slots", syscall: "mmap",
                errno: Errno(rawValue: errno))
        }
        self.base = region
        self.count = count
        self.key = key
        control = SlotControls(count: count)
        occupancy = .allocate(capacity: 1)
        occupancy.initialize(to: 0)
        segments = []
        handedOut = Array(repeating: false, count: count)
        inUse = Array(repeating: false, count: count)
        for index in 0..<count {
            do {
                segments.append(try Self.freshPage(key: key, index: index, at: page(index)))
            } catch {
                for segment in segments { segment.close() }
                munmap(base, size)
                control.words.deallocate()
                occupancy.deallocate()
                throw error
            }
        }
    }

    deinit {
        for segment in segments { segment.close() }
        munmap(base, count * RingLayout.slotSize)
        control.words.deallocate()
        occupancy.deallocate()
    }

    func page(_ index: Int) -> UnsafeMutableRawPointer { base + index * RingLayout.slotSize }

    private static func freshPage(key: String, index: Int, at address: UnsafeMutableRawPointer) throws(RingError)
        -> Segment
    {
        do {
            return try Segment.create(name: "shmring-slot:\(key):\(index)", size: RingLayout.slotSize, at: address)
        } catch {
            throw RingError(error, key: key)
        }
    }

    /// The memfds now mapped at the slots, in slot order (for `observe`).
    var descriptors: [FileDescriptor] { segments.map(\.descriptor) }

    /// Hands a free slot to a new consumer: a fresh page if the slot's page was handed out
    /// before, a new generation, the policy granted. Nil when every slot is taken.
    func handOut(policy: ConsumerPolicy) throws(RingError) -> (slot: Int, generation: UInt64, page: FileDescriptor)? {
        guard let slot = inUse.firstIndex(of: false) else { return nil }
        if handedOut[slot] {
            // The old holder may still hold its descriptor: never let it see (or write) the next
            // holder's page.
            let fresh = try Self.freshPage(key: key, index: slot, at: page(slot))
            segments[slot].close()  // the descriptor only: the range now maps the fresh memfd
            segments[slot] = fresh
        }
        lastGeneration &+= 1
        let generation = lastGeneration
        handedOut[slot] = true
        inUse[slot] = true
        let page = page(slot)
        // A copy of the generation for the consumer (it checks it against the reply) and for
        // observers; the producer decides only by its private copy below.
        // Relaxed: the producer's thread compares it (RingProducer.notify) only after it has seen
        // the private generation, published with release below.
        CShmAtomics_u64_store_relaxed(
            (page + RingLayout.Slot.generation).assumingMemoryBound(to: UInt64.self), generation)
        // Relaxed: published by the release store of the generation below.
        CShmAtomics_u64_store_relaxed(control.policy(slot), UInt64(policy.rawValue))
        // Release: the fresh page and the policy are visible before the generation that makes the
        // producer look at them. Partner: the acquire load in GatingScanner.sampleSlot, which
        // follows its load of the consumer's `active` (the consumer stores `active` only after
        // receiving the reply sent after this store).
        CShmAtomics_u64_store_release(control.generation(slot), generation)
        changeOccupancy(by: 1)
        return (slot, generation, segments[slot].descriptor)
    }

    /// The futex waits the consumer of `slot` counted in the doorbell's `sleepers` and did not
    /// count out (its page's `counted_waits`; a hint, capped at 64).
    func countedWaits(_ slot: Int) -> UInt32 {
        let word = (page(slot) + RingLayout.Slot.countedWaits).assumingMemoryBound(to: UInt32.self)
        // Relaxed: read after the consumer's connection hung up, which orders its last store.
        // Partner: the relaxed store in Sleeper.countedWaits (didSet). Capped: the page is the
        // consumer's, and trusted for nothing.
        return min(CShmAtomics_u32_load_relaxed(word), 64)
    }

    /// The consumer of `slot` detached or died: the producer stops looking at it at once, and the
    /// slot is free for the next joiner (with a fresh page).
    func reclaim(_ slot: Int) {
        // Release: pairs with the producer's acquire load in sampleSlot (the slot is then free).
        CShmAtomics_u64_store_release(control.generation(slot), 0)
        inUse[slot] = false
        changeOccupancy(by: -1)
        // A producer asleep on a full ring because of this consumer sleeps on the word in this
        // page (the next holder gets a fresh one): move it on and wake it. Release, as the
        // consumer's own wake (ConsumerSlot.wakeProducer); shared (the page is a memfd).
        let epoch = (page(slot) + RingLayout.Slot.spaceEpoch).assumingMemoryBound(to: UInt32.self)
        CShmAtomics_u32_store_release(epoch, CShmAtomics_u32_load_relaxed(epoch) &+ 1)
        _ = CShmLinux_futex_wake(epoch, Int32.max, false)
    }

    /// Release: a waiter that sees the new count sees the slot's state. Partner: the acquire load
    /// in RingProducer.waitForConsumers.
    private func changeOccupancy(by delta: Int32) {
        CShmAtomics_u32_store_release(
            occupancy, UInt32(bitPattern: Int32(bitPattern: CShmAtomics_u32_load_relaxed(occupancy)) &+ delta))
        _ = CShmLinux_futex_wake(occupancy, Int32.max, true)
    }
}
