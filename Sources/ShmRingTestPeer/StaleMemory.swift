import CShmAtomics
import ShmRing
import ShmRingTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// "Stale memory is harmless", as a property (RingStaleMemoryTests, docs/testing.md): on a 4 KiB
/// ring, whatever earlier laps, aborted claims and partial writes left in the ring, no reader ever
/// accepts a record the producer has not published.
///
/// Every record follows from a seed and its sequence number (`StalePlan`): how it is written
/// (a copy, a typed value of an odd size, a claim whose body writes partial words), its length,
/// its type tag, its content, the aborted claim before it (whose body writes partial words, or,
/// with `--scribble`, plants stale words), and the batches. So every reader checks sequence,
/// length, type, content *and position* of every record without a log, and the producer checks,
/// before it writes anything for a record, that nothing already reads as that record where a
/// caught-up reader waits for it.
struct StalePlan {
    /// How a record is written.
    enum Kind { case bytes, typed, claim }

    struct Record {
        var kind: Kind
        var length: Int
        var type: UInt32
        /// The length of an aborted claim made right before this record, if any.
        var abortLength: Int?
        /// A batch of this many records starts here (0: none).
        var batch: Int
    }

    let seed: UInt64
    let capacity: UInt64
    let alignment: UInt64
    let maxLength: Int
    /// The size of the typed values (1, 3, 13 or 49 bytes: every one leaves a partial word).
    let typedSize: Int
    let initialSequence: UInt64
    let initialPosition: UInt64

    /// The plan for `seed` on a ring of `capacity` bytes (alignment and typed size follow from the
    /// seed too, so that every process derives the same plan from the same options).
    init(seed: UInt64, capacity: Int, maxLength: Int? = nil) {
        self.seed = seed
        self.capacity = UInt64(capacity)
        // The seed's low four bits choose the alignment and the typed size, so that a test can
        // cover them all with four seeds.
        alignment = [8, 16, 64, 8][Int(seed & 3)]
        typedSize = [1, 3, 13, 49][Int((seed >> 2) & 3)]
        self.maxLength = maxLength ?? (capacity / 4 - 16)
        // Random sequences and positions, now and then close to where they wrap.
        let start = CShmRing_sequence_mix(seed ^ 0x57A7)
        initialSequence =
            (start & 1 == 0 ? start >> 1 : UInt64(CSHMRING_SEQUENCE_MASK) &- (start >> 40)) & CSHMRING_SEQUENCE_MASK
        let position = CShmRing_sequence_mix(seed ^ 0x9051)
        initialPosition = (position & 1 == 0 ? position : 0 &- (position >> 40)) & ~(alignment &- 1)
    }

    func hash(_ sequence: UInt64, _ stream: UInt64) -> UInt64 {
        CShmRing_sequence_mix(sequence ^ seed ^ (stream &* 0x9E37_79B9_7F4A_7C15))
    }

    /// A payload length: mostly short (many records a lap, every length mod 8), now and then up to
    /// the maximum.
    func length(_ random: UInt64) -> Int {
        switch random % 100 {
        case 0..<70: Int((random >> 8) % 65)
        case 70..<95: Int((random >> 8) % UInt64(min(300, maxLength) + 1))
        default: Int((random >> 8) % UInt64(maxLength + 1))
        }
    }

    func record(_ sequence: UInt64) -> Record {
        let h = hash(sequence, 1)
        let kind: Kind = h % 10 < 4 ? .bytes : h % 10 < 6 ? .typed : .claim
        let h2 = hash(sequence, 2)
        return Record(
            kind: kind, length: kind == .typed ? typedSize : length(h >> 4),
            type: UInt32(truncatingIfNeeded: h >> 32),
            abortLength: h2 % 8 == 0 ? length(h2 >> 3) : nil,
            batch: (h2 >> 60) == 0 ? 2 + Int((h2 >> 20) % 31) : 0)
    }

    func size(_ length: Int) -> UInt64 { (16 &+ UInt64(length) &+ alignment &- 1) & ~(alignment &- 1) }
    func room(_ position: UInt64) -> UInt64 { capacity &- (position & (capacity &- 1)) }
    func nextLap(_ position: UInt64) -> UInt64 { (position | (capacity &- 1)) &+ 1 }

    /// Where record `sequence` starts when the producer stands at `position` before it (its
    /// aborted claim, if any, may already move it to the next lap), and where it ends.
    func place(_ sequence: UInt64, at position: UInt64) -> (start: UInt64, end: UInt64) {
        let record = record(sequence)
        var start = position
        if let abort = record.abortLength, size(abort) > room(start) { start = nextLap(start) }
        if size(record.length) > room(start) { start = nextLap(start) }
        return (start, start &+ size(record.length))
    }

    /// Word `index` of record `sequence`'s content.
    func contentWord(_ sequence: UInt64, _ index: Int) -> UInt64 {
        hash(sequence, 3) &+ UInt64(index) &* 0xD6E8_FEB8_6659_FD93
    }

    /// Writes record `sequence`'s content (its `length` bytes) into `buffer`.
    func content(_ sequence: UInt64, length: Int, into buffer: UnsafeMutableRawPointer) {
        var offset = 0
        while offset < length {
            var word = contentWord(sequence, offset / 8).littleEndian
            withUnsafeBytes(of: &word) { bytes in
                (buffer + offset).copyMemory(from: bytes.baseAddress!, byteCount: min(8, length - offset))
            }
            offset += 8
        }
    }

    /// Whether `bytes` is record `sequence`'s content.
    func isContent(_ sequence: UInt64, _ bytes: UnsafeRawBufferPointer) -> Bool {
        var offset = 0
        while offset + 8 <= bytes.count {
            if UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
                != contentWord(sequence, offset / 8)
            {
                return false
            }
            offset += 8
        }
        var word = contentWord(sequence, offset / 8).littleEndian
        return withUnsafeBytes(of: &word) { expected in
            (offset..<bytes.count).allSatisfy { bytes[$0] == expected[$0 - offset] }
        }
    }

    /// What a reader of record `sequence` checks against the plan.
    func check(_ sequence: UInt64, _ bytes: RawSpan, type: UInt32) -> String? {
        let record = record(sequence)
        guard bytes.byteCount == record.length else { return "length \(bytes.byteCount), planned \(record.length)" }
        guard type == record.type else { return "type \(type), planned \(record.type)" }
        guard bytes.withUnsafeBytes({ isContent(sequence, $0) }) else { return "content is not the planned one" }
        return nil
    }
}

/// Odd-sized values for typed publishes: no interior padding, so their bytes are the plan's.
struct Odd3: BitwiseCopyable {
    var a: UInt16
    var b: UInt8
}

struct Odd13: BitwiseCopyable {
    var a: UInt64
    var b: UInt32
    var c: UInt8
}

struct Odd49: BitwiseCopyable {
    var a: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64)
    var b: UInt8
}

enum StaleMemory {
    static let sequenceMask = UInt64(CSHMRING_SEQUENCE_MASK)

    /// `--key K --seed S --count N [--capacity C] [--wait-consumers W] [--scribble]`: creates the
    /// ring the plan describes, waits for W consumers, publishes N planned records (checking
    /// before each that nothing reads as it yet), then waits for the consumers to detach.
    /// Reports `published=`, `aborted=`, `batches=`, `planted=` (stale words planted by
    /// `--scribble`), `forged=0`; a forged record ends the producer at once (status 3) with the
    /// details on stderr.
    static func produce(_ options: PeerOptions) throws {
        let seed = UInt64(options.string("seed"))!
        let plan = StalePlan(seed: seed, capacity: options.int("capacity", default: 4096))
        var configuration = RingConfiguration(capacity: Int(plan.capacity))
        configuration.alignment = Int(plan.alignment)
        configuration.initialSequence = plan.initialSequence
        configuration.initialPosition = plan.initialPosition
        configuration.maxConsumers = 16
        configuration.fingerprint = fingerprint(typedSize: plan.typedSize)
        let producer = try RingProducer(key: options.string("key"), configuration: configuration)
        var writer = StaleWriter(producer: producer, plan: plan, scribble: options.has("scribble"))
        let count = UInt64(options.int("count"))
        PeerRuntime.report("alignment=\(plan.alignment)")
        PeerRuntime.report("typed_size=\(plan.typedSize)")
        PeerRuntime.ready("created")
        let waitFor = options.int("wait-consumers", default: 0)
        while producer.activeConsumerCount < waitFor { usleep(200) }
        let started = RingCommands.now()
        var spins = 0
        while writer.published < count {
            let record = plan.record(writer.sequence)
            let before = writer.published
            if record.batch > 0 {
                let end = min(count, writer.published + UInt64(record.batch))
                try producer.batch { _ in
                    while writer.published < end, try writer.publishNext() {}
                }
                if writer.published > before { writer.batches += 1 }
            } else {
                _ = try writer.publishNext()
            }
            if writer.published == before {
                RingCommands.idle.idle(&spins)  // back-pressured: the readers need the CPU
            } else {
                spins = 0
            }
        }
        PeerRuntime.report("published=\(writer.published)")
        PeerRuntime.report("aborted=\(writer.aborted)")
        PeerRuntime.report("batches=\(writer.batches)")
        PeerRuntime.report("planted=\(writer.planted)")
        PeerRuntime.report("back_pressured=\(writer.backPressured)")
        PeerRuntime.report("forged=0")
        PeerRuntime.report("elapsed_ns=\(RingCommands.now() - started)")
        PeerRuntime.ready("published")
        while producer.activeConsumerCount > 0 { usleep(1000) }
    }

    static func fingerprint(typedSize: Int) -> RingTypeFingerprint {
        switch typedSize {
        case 1: RingTypeFingerprint(UInt8.self)
        case 3: RingTypeFingerprint(Odd3.self)
        case 13: RingTypeFingerprint(Odd13.self)
        default: RingTypeFingerprint(Odd49.self)
        }
    }

    /// `--key K --seed S --count N [--policy gating|lossy] [--in-place] [--from oldest|newest]`:
    /// attaches, says "attached", and reads until the plan's last record, checking every record
    /// (sequence, position, length, type, content) and every reported gap. Reports `received=`,
    /// `wrong=` (records that are not the planned ones, or not where the plan puts them),
    /// `unreported_gaps=`, `lapped=`, `torn=` (in-place records the validation took back).
    static func read(_ options: PeerOptions) throws {
        let seed = UInt64(options.string("seed"))!
        let lossy = options.has("policy") && options.string("policy") == "lossy"
        let from: RingStartPosition = options.has("from") && options.string("from") == "newest" ? .newest : .oldest
        let consumer = try RingConsumer(
            key: options.string("key"), configuration: .init(start: from, policy: lossy ? .lossy : .gating))
        let plan = StalePlan(seed: seed, capacity: consumer.capacity)
        let end = (plan.initialSequence &+ UInt64(options.int("count"))) & sequenceMask
        PeerRuntime.ready("attached")
        var reader = StaleReader(plan: plan)
        let inPlace = options.has("in-place")
        var torn = 0
        var spins = 0
        while (end &- consumer.nextSequence) & sequenceMask != 0 {
            var got = 0
            do throws(RingError) {
                if inPlace {
                    // Checked in place; the validation after the handler says which were torn.
                    var outcomes: [String?] = []
                    var infos: [RingRecordInfo] = []
                    let result = try consumer.pollInPlace { bytes, info in
                        outcomes.append(plan.check(info.sequence, bytes, type: info.type))
                        infos.append(info)
                        return .continue
                    }
                    torn += result.torn
                    // Torn records count as missed, and so does what the first of them was told
                    // was missed before it: the intact record after them in the same call was
                    // handed out before the validation, and its info includes neither.
                    let alsoMissed = infos.prefix(result.torn).reduce(UInt64(result.torn)) { $0 + $1.missedMessages }
                    for index in result.torn..<result.handled {
                        reader.accept(infos[index], outcomes[index], alsoMissed: index == result.torn ? alsoMissed : 0)
                    }
                    got = result.handled
                } else {
                    got = try consumer.poll(limit: 4096) { bytes, info in
                        reader.accept(info, plan.check(info.sequence, bytes, type: info.type))
                        return .continue
                    }
                }
            } catch {
                guard error.code == .cannotKeepUp else { throw error }
            }
            if got == 0 {
                RingCommands.idle.idle(&spins)
                if spins % 4096 == 0 && !consumer.isProducerAlive {
                    PeerRuntime.fail("the producer went away at sequence \(consumer.nextSequence)")
                }
            } else {
                spins = 0
            }
        }
        reader.report()
        PeerRuntime.report("lapped=\(consumer.lappedMessages)")
        PeerRuntime.report("torn=\(torn)")
        consumer.detach()
    }

    /// `--key K --seed S --count N --per-round M`: joins and leaves until the plan's last record,
    /// alternately gating and lossy, from the newest and the oldest record; each round reads M
    /// records checked as `ring-stale-read` checks them (from its first record on). The next
    /// attachment is made before the last one is left, so that the producer (which waits for its
    /// consumers to leave) never goes while this one is between two rounds. Reports `rounds=` and
    /// the checks' totals.
    static func join(_ options: PeerOptions) throws {
        let seed = UInt64(options.string("seed"))!
        let perRound = options.int("per-round")
        func attach(_ round: Int) throws -> RingConsumer {
            try RingConsumer(
                key: options.string("key"),
                configuration: .init(
                    start: round % 4 < 2 ? .newest : .oldest, policy: round % 2 == 0 ? .gating : .lossy))
        }
        var consumer = try attach(0)
        let plan = StalePlan(seed: seed, capacity: consumer.capacity)
        let end = (plan.initialSequence &+ UInt64(options.int("count"))) & sequenceMask
        var reader = StaleReader(plan: plan)
        var rounds = 1
        PeerRuntime.ready("attached")
        while true {
            var read = 0
            var spins = 0
            while read < perRound && (end &- consumer.nextSequence) & sequenceMask != 0 {
                var got = 0
                do throws(RingError) {
                    got = try consumer.poll(limit: perRound - read) { bytes, info in
                        reader.accept(info, plan.check(info.sequence, bytes, type: info.type))
                        return .continue
                    }
                } catch {
                    guard error.code == .cannotKeepUp else { throw error }
                }
                read += got
                if got == 0 {
                    RingCommands.idle.idle(&spins)
                    if spins % 4096 == 0 && !consumer.isProducerAlive {
                        PeerRuntime.fail("the producer went away at sequence \(consumer.nextSequence)")
                    }
                } else {
                    spins = 0
                }
            }
            if (end &- consumer.nextSequence) & sequenceMask == 0 { break }
            let next = try attach(rounds)
            consumer.detach()
            consumer = next
            reader.restart()
            rounds += 1
        }
        consumer.detach()
        PeerRuntime.report("rounds=\(rounds)")
        reader.report()
    }
}

/// A reader's checks: each record is the planned one, where the plan puts it, and every gap is
/// reported.
struct StaleReader {
    let plan: StalePlan
    /// The sequence and position the next record should have (nil before the first record of an
    /// attachment: a joiner's start is not known in advance).
    var next: (sequence: UInt64, position: UInt64)?
    var received = 0
    var wrong = 0
    var unreportedGaps = 0

    init(plan: StalePlan) { self.plan = plan }

    mutating func restart() { next = nil }

    mutating func accept(_ info: RingRecordInfo, _ failure: String?, alsoMissed: UInt64 = 0) {
        received += 1
        var failure = failure
        if let (sequence, position) = next {
            let missed = (info.sequence &- sequence) & StaleMemory.sequenceMask
            if missed != info.missedMessages &+ alsoMissed {
                unreportedGaps += 1
                failure = failure ?? "\(missed) missed, \(info.missedMessages) + \(alsoMissed) reported"
            } else if missed < 1 << 20 {
                // Where the missed records were, then this one: the plan says.
                var at = position
                var skipped = sequence
                while skipped != info.sequence {
                    at = plan.place(skipped, at: at).end
                    skipped = (skipped &+ 1) & StaleMemory.sequenceMask
                }
                let start = plan.place(info.sequence, at: at).start
                if info.position != start { failure = failure ?? "at position \(info.position), planned \(start)" }
            }
        }
        if let failure {
            if wrong == 0 {
                PeerRuntime.report("first_wrong=\(failure) sequence=\(info.sequence) position=\(info.position)")
            }
            wrong += 1
        }
        let end = info.position &+ plan.size(plan.record(info.sequence).length)
        next = ((info.sequence &+ 1) & StaleMemory.sequenceMask, end)
    }

    func report() {
        PeerRuntime.report("received=\(received)")
        PeerRuntime.report("wrong=\(wrong)")
        PeerRuntime.report("unreported_gaps=\(unreportedGaps)")
    }
}

/// The producer's side of the plan: publishes record after record as the plan says, and before
/// it writes anything for a record, checks that nothing already reads as that record where a
/// caught-up reader waits for it (the diagnostic that caught the half-overwritten commit word).
struct StaleWriter {
    let producer: RingProducer
    let plan: StalePlan
    /// Plant stale words in aborted claims (otherwise their bodies write partial words at random).
    let scribble: Bool
    let data: UnsafeMutableRawPointer
    let salt: UInt64
    let scratch: UnsafeMutableRawPointer
    var sequence: UInt64
    var published: UInt64 = 0
    var aborted = 0
    var batches = 0
    var planted = 0
    var backPressured = 0
    /// The planned record's aborted claim is done (its record was back-pressured since).
    var abortDone = false
    /// Where the producer stood before the current record's aborted claim.
    var before: UInt64
    /// Sweeps every earlier sequence, for the stale words `--scribble` plants.
    var sweep: UInt64
    var random: SplitMix64

    init(producer: RingProducer, plan: StalePlan, scribble: Bool) {
        self.producer = producer
        self.plan = plan
        self.scribble = scribble
        let header = producer.headerForTests
        data = header + Int(CSHMRING_DATA_OFFSET)
        salt = header.load(fromByteOffset: Int(CSHMRING_OFFSET_SALT), as: UInt64.self)
        scratch = .allocate(byteCount: plan.maxLength + 8, alignment: 16)
        sequence = plan.initialSequence
        before = plan.initialPosition
        sweep = plan.initialSequence
        random = SplitMix64(seed: plan.seed ^ 0x5C81B)
    }

    /// Publishes the next planned record (and the aborted claim before it). False when
    /// back-pressured: nothing of the record was published (inside a batch, the batch ends).
    mutating func publishNext() throws -> Bool {
        let record = plan.record(sequence)
        if let abortLength = record.abortLength, !abortDone {
            checkUnforged(at: producer.position)
            var body = (random: random, planted: 0, sweep: sweep)
            let result = try producer.claim(length: abortLength) { [self] span in
                span.withUnsafeMutableBytes { buffer in
                    if scribble {
                        body.planted += plant(buffer, random: &body.random, sweep: &body.sweep)
                    } else {
                        spoil(buffer, random: &body.random)
                    }
                }
                return .abort
            }
            random = body.random
            sweep = body.sweep
            switch result {
            case .aborted: break
            case .backPressured:
                backPressured += 1
                return false
            case .published: PeerRuntime.fail("a claim whose body returned .abort says .published")
            }
            planted += body.planted
            aborted += 1
            abortDone = true
        }
        let planned = plan.place(sequence, at: before)
        let position = producer.position
        checkUnforged(at: position)
        if planned.start != position { checkUnforged(at: planned.start) }
        plan.content(sequence, length: record.length, into: scratch)
        let written: Bool
        switch record.kind {
        case .bytes:
            written =
                try producer.publish(UnsafeRawBufferPointer(start: scratch, count: record.length), type: record.type)
                == .published
        case .typed:
            let result: PublishResult
            switch plan.typedSize {
            case 1: result = try producer.publish(value: scratch.load(as: UInt8.self), type: record.type)
            case 3: result = try producer.publish(value: scratch.loadUnaligned(as: Odd3.self), type: record.type)
            case 13: result = try producer.publish(value: scratch.loadUnaligned(as: Odd13.self), type: record.type)
            default: result = try producer.publish(value: scratch.loadUnaligned(as: Odd49.self), type: record.type)
            }
            written = result == .published
        case .claim:
            let chunks = plan.hash(sequence, 4)
            let result = try producer.claim(length: record.length, type: record.type) { [scratch] span in
                // In pieces of 1 to 8 bytes, most of them not whole words.
                span.withUnsafeMutableBytes { buffer in
                    var offset = 0
                    var sizes = chunks
                    while offset < buffer.count {
                        let size = min(1 + Int(sizes & 7), buffer.count - offset)
                        sizes = sizes >> 3 | sizes << 61
                        (buffer.baseAddress! + offset).copyMemory(from: scratch + offset, byteCount: size)
                        offset += size
                    }
                }
                return .commit
            }
            written = result == .published
        }
        guard written else {
            backPressured += 1
            return false
        }
        guard producer.position == planned.end else {
            PeerRuntime.fail(
                "record \(sequence) ends at \(producer.position), planned at \(planned.end) (from \(before))")
        }
        before = planned.end
        sequence = (sequence &+ 1) & StaleMemory.sequenceMask
        published += 1
        abortDone = false
        return true
    }

    /// Fails the producer if the word at `position` already reads, to a reader waiting there for
    /// the next record, as that record or as its padding: what a reader would accept although the
    /// producer has not written it. The same check as the readers' (RingView.record), from the
    /// layout's C definitions.
    func checkUnforged(at position: UInt64) {
        let offset = Int(position & (plan.capacity &- 1))
        let word = CShmAtomics_u64_load_relaxed((data + offset).assumingMemoryBound(to: UInt64.self))
        var (length, type) = (UInt32.max, UInt32(0))
        if offset + 16 <= Int(plan.capacity) {
            length = (data + offset + 8).load(as: UInt32.self)
            type = (data + offset + 12).load(as: UInt32.self)
        }
        let record = word == CShmRing_record_word(sequence, salt, length, type)
        guard record || word == CShmRing_padding_word(sequence, salt) else { return }
        let line =
            "ring-stale-produce: forged: the word at position \(position) (offset \(offset)) reads as "
            + "\(record ? "record" : "padding") \(sequence) (header length \(length), type \(type)) before the "
            + "producer wrote it; published \(published)\n"
        _ = line.withCString { write(2, $0, strlen($0)) }
        PeerRuntime.report("forged=1")
        exit(3)
    }

    /// An aborted claim's body without `--scribble`: bytes written at random places, in pieces of
    /// 1 to 7 (partial words over whatever earlier laps left).
    func spoil(_ buffer: UnsafeMutableRawBufferPointer, random: inout SplitMix64) {
        guard buffer.count > 0 else { return }
        for _ in 0..<(1 + Int(random.next() % 8)) {
            let bits = random.next()
            let offset = Int(bits % UInt64(buffer.count))
            let size = min(1 + Int((bits >> 32) % 7), buffer.count - offset)
            var bytes = random.next()
            withUnsafeBytes(of: &bytes) {
                (buffer.baseAddress! + offset).copyMemory(from: $0.baseAddress!, byteCount: size)
            }
        }
    }

    /// An aborted claim's body with `--scribble`: fills the space with stale words, whole, before
    /// the producer reaches it. Where the plan will start a record, the word a half-overwritten
    /// commit word of an earlier record would leave there (its low byte the one that matches that
    /// record's word, as in the churn failure), or an earlier record's whole commit word, each with
    /// that record's header behind it; elsewhere random words and commit words of earlier records
    /// (recent ones, and a sweep over every one since the start). Returns the stale commit words
    /// planted.
    func plant(_ buffer: UnsafeMutableRawBufferPointer, random: inout SplitMix64, sweep: inout UInt64) -> Int {
        // The buffer's position in the ring (the claim's record starts at the producer's position).
        let start = producer.position &+ 16
        let end = start &+ UInt64(buffer.count)
        // Where the plan starts records in this space, and with which sequence.
        var starts: [(position: UInt64, sequence: UInt64)] = []
        var at = plan.place(sequence, at: before)
        var next = sequence
        while Int64(bitPattern: at.start &- end) < 0 && starts.count < 256 {
            if Int64(bitPattern: at.start &- start) >= 0 { starts.append((at.start, next)) }
            next = (next &+ 1) & StaleMemory.sequenceMask
            at = plan.place(next, at: at.end)
        }
        var planted = 0
        var word = (start &+ 7) & ~7
        while Int64(bitPattern: word &+ 8 &- end) <= 0 {
            let bits = random.next()
            let offset = Int(word &- start)
            let expected = starts.first { $0.position == word }?.sequence
            var value = bits
            var header: UInt64?
            if expected != nil || bits % 3 != 0 {
                // An earlier record: close to the expected one (only its low byte differs when
                // possible), a recent one, or the next of the sweep over every earlier one.
                let earlier: UInt64
                if let expected {
                    let sameHigh = (expected & ~0xFF) | (bits >> 8 & 0xFF)
                    earlier =
                        sameHigh < expected
                        ? sameHigh : (expected &- 1 &- (bits >> 8 & 0xFF)) & StaleMemory.sequenceMask
                } else if bits & 4 == 0 {
                    earlier = (sequence &- 1 &- (bits >> 8) % 512) & StaleMemory.sequenceMask
                } else {
                    earlier = sweep
                    sweep = (sweep &+ 1) & StaleMemory.sequenceMask
                    if sweep == sequence { sweep = plan.initialSequence }
                }
                let old = plan.record(earlier)
                let length = UInt32(old.length)
                value = CShmRing_record_word(earlier, salt, length, old.type)
                if let expected, bits & 8 == 0 {
                    value = value & ~0xFF | CShmRing_record_word(expected, salt, length, old.type) & 0xFF
                }
                header = UInt64(length) | UInt64(old.type) << 32
                planted += 1
            }
            (buffer.baseAddress! + offset).storeBytes(of: value, as: UInt64.self)
            if let header, offset + 16 <= buffer.count {
                (buffer.baseAddress! + offset + 8).storeBytes(of: header, as: UInt64.self)
                word &+= 8
            }
            word &+= 8
        }
        return planted
    }
}
