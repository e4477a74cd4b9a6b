import CShmAtomics
import Testing

@testable import ShmRing
import ShmRingTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// A 49-byte value: a typed publish of it ends one byte into an 8-byte word.
struct FortyNineBytes: BitwiseCopyable {
    var words: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64)
    var last: UInt8
}

/// Stale memory is harmless: what earlier laps left in the ring never passes for a record
/// (docs/ring.md, "Stale memory"). The multi-process property test is RingStaleMemoryPropertyTests.
@Suite struct RingStaleMemoryTests {
    /// How the payload that ends on the old commit word's first byte is written.
    enum Writer: String, CaseIterable, CustomTestStringConvertible {
        case bytes, value, claim
        var testDescription: String { rawValue }
    }

    /// The churn failure, laid out on purpose (4 KiB ring, alignment 16, sequences chosen so that
    /// the old and the expected record differ in their low byte only):
    /// - lap 1: record A (sequence a, 97 bytes, type 7) at offset 1024;
    /// - lap 2: record B at 960, whose 49-byte payload ends on byte 0 of A's old commit word, with
    ///   the byte that makes the word match record s (or, as the control, one that does not);
    ///   A's header stays behind it, in B's padding;
    /// - lap 3: the producer stops at offset 1024 before record s = a + 10, a gating reader
    ///   caught up and waiting there. It must see nothing until the producer publishes s.
    /// With layout 2 (the sequence XORed into the word, the payload copied byte-wise) the matching
    /// byte made the reader accept a 97-byte "record s" that was A's leftover.
    @Test(arguments: Writer.allCases, [true, false])
    func aPayloadEndingOnAnOldCommitWordsFirstByteForgesNoRecord(writer: Writer, matching: Bool) throws {
        let key = uniqueKey()
        var configuration = RingConfiguration(capacity: 4096)
        configuration.initialSequence = 0x5500
        configuration.fingerprint = RingTypeFingerprint(FortyNineBytes.self)
        let producer = try RingProducer(key: key, configuration: configuration)
        let reader = try RingConsumer(key: key)
        #expect(configuration.alignment == 16)
        var published: [UInt64: [UInt8]] = [:]
        var delivered = 0
        func deliver() throws {
            try reader.poll { bytes, info in
                #expect(bytes.withUnsafeBytes { Array($0) } == published[info.sequence], "record \(info.sequence)")
                delivered += 1
                return .continue
            }
        }
        func publish(_ length: Int, type: UInt32 = 0) throws {
            let bytes = (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ length) }
            published[producer.state.pointee.sequence] = bytes
            #expect(try producer.publish(bytes, type: type) == .published)
            try deliver()  // the reader stays caught up (and lets the gating producer go on)
        }
        let x: UInt64 = 1024
        // Lap 1.
        try publish(1008)
        let a = producer.state.pointee.sequence
        #expect(producer.position == x)
        try publish(97, type: 7)
        for length in [1008, 1008, 880] { try publish(length) }
        #expect(producer.position == 4096)
        // Lap 2: B's payload covers [976, 1025): its last byte is byte 0 of A's commit word.
        try publish(944)
        #expect(producer.position == 4096 + x - 64)
        let s = a + 10
        #expect(a ^ s < 256, "only the low byte of the sequences differs")
        let matchingByte = UInt8(truncatingIfNeeded: producer.view.recordWord(sequence: s, length: 97, type: 7))
        let last = matching ? matchingByte : matchingByte ^ 0x5A
        var payload = (0..<49).map { UInt8(truncatingIfNeeded: $0 &* 13) }
        payload[48] = last
        published[producer.state.pointee.sequence] = payload
        switch writer {
        case .bytes:
            #expect(try producer.publish(payload) == .published)
        case .value:
            let value = payload.withUnsafeBytes { $0.loadUnaligned(as: FortyNineBytes.self) }
            #expect(try producer.publish(value: value) == .published)
        case .claim:
            let result = try producer.claim(length: 49) { span in
                for index in 0..<49 { span.storeBytes(of: payload[index], toByteOffset: index, as: UInt8.self) }
                return .commit
            }
            #expect(result == .published)
        }
        try deliver()
        #expect(producer.position == 4096 + x + 16)
        // Whole words: the word B's payload ends in holds that byte and zeros, nothing of A's word.
        #expect((producer.view.data + Int(x)).load(as: UInt64.self) == UInt64(last))
        // A's header survives behind it, in B's padding.
        #expect((producer.view.data + Int(x) + 8).load(as: UInt32.self) == 97)
        for length in [1008, 1008, 992] { try publish(length) }
        // Lap 3: up to offset 1024, where record s goes next.
        try publish(1008)
        #expect(producer.position == 8192 + x && producer.state.pointee.sequence == s)
        #expect(reader.position == 8192 + x && reader.nextSequence == s)
        #expect(delivered == 11)
        // Caught up at the stale word: nothing is there yet.
        for _ in 0..<3 { try deliver() }
        #expect(delivered == 11, "a record the producer never wrote was accepted")
        // Then the producer publishes s, and exactly s arrives.
        try publish(40)
        #expect(delivered == 12)
        #expect(reader.nextSequence == s + 1 && reader.position == 8192 + x + 64)
    }

    /// The commit word depends on the sequence in all 64 bits: the words of records up to 255
    /// sequence numbers apart (a 4 KiB ring holds a few dozen records a lap) never share their
    /// high 40 bits, so no overwrite of their low three bytes or fewer turns one into the other.
    /// (Fixed salts and shapes: a deterministic check of 10 million pairs, each of which a random
    /// function passes with probability 1 - 2^-40. Layout 2's words shared their high 56 bits.)
    @Test func commitWordsOfNearbySequencesShareNoHighBytes() {
        var random = SplitMix64(seed: 0x57A1E)
        for _ in 0..<40 {
            let salt = random.next()
            let length = UInt32(truncatingIfNeeded: random.next() % 1009)
            let type = UInt32(truncatingIfNeeded: random.next())
            let base = random.next() & RingLayout.sequenceMask
            let words = (0..<UInt64(1024 + 255)).map {
                CShmRing_record_word((base &+ $0) & RingLayout.sequenceMask, salt, length, type)
            }
            var collisions = 0
            for index in 0..<1024 {
                for distance in 1...255 where words[index] >> 24 == words[index + distance] >> 24 {
                    collisions += 1
                }
            }
            #expect(collisions == 0, "salt \(salt), sequences from \(base)")
            // A padding word never equals a record word of the same sequence (bit 63 of the
            // shapes differs).
            for index in 0..<64 {
                let sequence = (base &+ UInt64(index)) & RingLayout.sequenceMask
                #expect(CShmRing_padding_word(sequence, salt) != words[index])
                #expect((CShmRing_padding_word(sequence, salt) ^ words[index]) >> 63 == 1)
            }
        }
    }
}

extension MultiProcess {
    /// Stale memory is harmless, as a property across processes (release-built peer): on a 4 KiB
    /// ring, records of every length mod 8, typed values of odd sizes, claims whose bodies write
    /// partial words, aborted claims that spoil the space before the producer reaches it, padding
    /// at the wrap, batches; two gating readers, a copying and an in-place lossy reader, all
    /// caught up at the head as often as the two CPUs allow, and a process joining and leaving.
    /// Every record follows from a seed and its sequence (`StalePlan` in the peer), so every reader
    /// checks sequence, position, length, type and content of every record, and the producer
    /// checks before each record that nothing reads as it yet where a caught-up reader waits.
    ///
    /// Sizes: 10 million messages in the test command (four seeds: every alignment and typed
    /// size), SHMRING_PROPERTY_MESSAGES by hand (docs/testing.md: 10^9); SHMRING_PROPERTY_SEED
    /// replays a run.
    @Suite struct RingStaleMemoryPropertyTests {
        static var messages: Int {
            getenv("SHMRING_PROPERTY_MESSAGES").flatMap { Int(String(cString: $0)) } ?? 10_000_000
        }

        static var seedBase: UInt64 {
            getenv("SHMRING_PROPERTY_SEED").flatMap { UInt64(String(cString: $0)) } ?? UInt64.random(in: 1...(1 << 60))
        }

        /// Runs the producer, four readers and a joiner on one plan; returns the producer's results.
        func run(seed: UInt64, messages: Int, scribble: Bool) throws -> [String: String] {
            let key = uniqueKey()
            let producer = try ChildProcess(
                TestPeer.forHeavyLoops,
                [
                    "ring-stale-produce", "--key", key, "--seed", "\(seed)", "--count", "\(messages)",
                    "--wait-consumers", "5",
                ]
                    + (scribble ? ["--scribble"] : []))
            try #require(producer.waitForReady("created"))
            let common = ["--key", key, "--seed", "\(seed)", "--count", "\(messages)"]
            let readers = try [
                ("gating", ["--policy", "gating"]), ("gating", ["--policy", "gating"]),
                ("lossy", ["--policy", "lossy"]), ("lossy in place", ["--policy", "lossy", "--in-place"]),
            ].map { name, options in
                (name, try ChildProcess(TestPeer.forHeavyLoops, ["ring-stale-read"] + common + options))
            }
            let joiner = try ChildProcess(
                TestPeer.forHeavyLoops, ["ring-stale-join"] + common + ["--per-round", "500"])
            var summary: [String] = []
            for (name, reader) in readers {
                #expect(
                    reader.wait(timeout: .seconds(1800)) == .exited(0), "seed \(seed), \(name): \(reader.standardError)"
                )
                let results = reader.results
                #expect(
                    results["wrong"] == "0" && results["unreported_gaps"] == "0", "seed \(seed), \(name): \(results)")
                let received = Int(results["received"] ?? "") ?? 0
                let lapped = Int(results["lapped"] ?? "") ?? 0
                // Exact: every record was checked, or counted as missed (torn ones in place included).
                #expect(received + lapped == messages, "seed \(seed), \(name): \(results)")
                if name == "gating" { #expect(lapped == 0, "seed \(seed), \(name): \(results)") }
                summary.append("\(name) \(received) checked, \(lapped) lapped")
            }
            #expect(joiner.wait(timeout: .seconds(1800)) == .exited(0), "seed \(seed), joiner: \(joiner.standardError)")
            #expect(joiner.results["wrong"] == "0" && joiner.results["unreported_gaps"] == "0", "\(joiner.results)")
            #expect(producer.wait(timeout: .seconds(1800)) == .exited(0), "seed \(seed): \(producer.standardError)")
            let results = producer.results
            #expect(results["published"] == "\(messages)" && results["forged"] == "0", "seed \(seed): \(results)")
            print(
                "stale memory, seed \(seed) (alignment \(results["alignment"] ?? "?"), typed size "
                    + "\(results["typed_size"] ?? "?")): \(results["published"] ?? "?") published, "
                    + "\(results["aborted"] ?? "?") aborted claims, \(results["batches"] ?? "?") batches, "
                    + "\(results["planted"] ?? "?") stale words planted; \(summary.joined(separator: ", ")); joiner "
                    + "\(joiner.results["rounds"] ?? "?") rounds, \(joiner.results["received"] ?? "?") checked")
            return results
        }

        /// Four seeds (every alignment, every typed size), a quarter of the messages each.
        @Test func noReaderEverAcceptsARecordTheProducerHasNotPublished() throws {
            let base = Self.seedBase & ~15
            for variant: UInt64 in 0..<4 {
                _ = try run(seed: base | variant | variant << 2, messages: Self.messages / 4, scribble: false)
            }
        }

        /// The producer plants stale words ahead of itself before it gets there: random words,
        /// commit words of earlier records (whole, with their headers), and, where the plan starts
        /// a record, the word a half-overwritten commit word of an earlier record would leave (its
        /// low byte chosen to match). Nothing is accepted early.
        @Test func staleWordsPlantedAheadOfTheProducerAreNeverAccepted() throws {
            let base = Self.seedBase & ~15
            for variant: UInt64 in 0..<4 {
                let results = try run(seed: base | variant | variant << 2, messages: Self.messages / 40, scribble: true)
                #expect((Int(results["planted"] ?? "") ?? 0) > 0)
            }
        }
    }
}
