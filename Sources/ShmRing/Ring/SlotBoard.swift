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

/// Where a consumer slot is in its life (docs/failure-model.md, "A slot's life"). Kept by the
/// rendezvous server's thread; the producer's thread sees only the private generation.
enum SlotState: Equatable {
    /// Nobody holds it; its private generation is 0.
    case free
    /// Handed out with a handshake reply: the joiner maps the ring and joins (its page's `joined`
    /// then holds its generation). While it joins it may already hold a gating producer back
    /// (from its store of `active`). If it has not joined within the ring's join timeout, the
    /// server refuses the join (`decideJoin`), ends its connection, and reclaims the slot.
    case reserved
    /// Joined: the producer reads its cursor (and waits for it, if gating).
    case active
    /// Its connection ended (it detached, died, or timed out joining): being reclaimed — out of
    /// the gating set, its futex waits counted out, the producer and sleepers woken — then free.
    case leaving
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
    private(set) var states: [SlotState]
    private var lastGeneration: UInt64 = 0
    /// How many slots are handed out: a private futex word, changed on this thread and woken for
    /// the producer's `waitForConsumers`.
    let occupancy: UnsafeMutablePointer<UInt32>
    /// Slots reclaimed from consumers that went without detaching (they died, or were cut off
    /// mid-join): written on this thread, read by any (relaxed).
    let abandoned: UnsafeMutablePointer<UInt64>

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
        abandoned = .allocate(capacity: 1)
        abandoned.initialize(to: 0)
        segments = []
        handedOut = Array(repeating: false, count: count)
        states = Array(repeating: .free, count: count)
        for index in 0..<count {
            do {
                segments.append(try Self.freshPage(key: key, index: index, at: page(index)))
            } catch {
                for segment in segments { segment.close() }
                munmap(base, size)
                control.words.deallocate()
                occupancy.deallocate()
                abandoned.deallocate()
                throw error
            }
        }
    }

    deinit {
        for segment in segments { segment.close() }
        munmap(base, count * RingLayout.slotSize)
        control.words.deallocate()
        occupancy.deallocate()
        abandoned.deallocate()
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
        guard let slot = states.firstIndex(of: .free) else { return nil }
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
        states[slot] = .reserved
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

    /// Whether the joiner of `slot` (holding `generation`) has joined: its page's `joined` says
    /// so. Moves the slot from reserved to active. With `final` (the join timeout has passed),
    /// decides: unless the generation is there, swaps in `joinRefused`, so that a joiner that
    /// was only stopped cannot complete its join after the slot is reclaimed (RingJoiner.join
    /// swaps its generation in the same way; one of the two wins) and returns false.
    func decideJoin(_ slot: Int, generation: UInt64, final: Bool) -> Bool {
        guard states[slot] == .reserved else { return states[slot] == .active }
        let word = (page(slot) + RingLayout.Slot.joined).assumingMemoryBound(to: UInt64.self)
        // Relaxed while not final: a look; the producer decides whom it waits for by its own
        // acquire load (GatingScanner.sampleSlot).
        var joined = CShmAtomics_u64_load_relaxed(word)
        if final {
            // Acq_rel: partner, the joiner's compare-and-swap of its generation.
            while joined != generation {
                if CShmAtomics_u64_compare_exchange_acq_rel(word, &joined, RingLayout.Slot.joinRefused) { return false }
            }
        }
        guard joined == generation else { return false }
        states[slot] = .active
        return true
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
        states[slot] = .leaving
        // Still marked active by its holder: it went without detaching (it died, or was cut off
        // mid-join). Relaxed: its connection's end orders its last store; a count, not a decision.
        let active = (page(slot) + RingLayout.Slot.active).assumingMemoryBound(to: UInt64.self)
        let generation = CShmAtomics_u64_load_relaxed(control.generation(slot))
        if generation != 0 && CShmAtomics_u64_load_relaxed(active) == generation {
            // Relaxed: a statistic (written on this thread only).
            CShmAtomics_u64_store_relaxed(abandoned, CShmAtomics_u64_load_relaxed(abandoned) &+ 1)
        }
        // Release: pairs with the producer's acquire load in sampleSlot (the slot is then free).
        CShmAtomics_u64_store_release(control.generation(slot), 0)
        defer { states[slot] = .free }
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
