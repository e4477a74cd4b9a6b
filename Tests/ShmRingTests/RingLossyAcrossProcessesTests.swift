import Foundation
import Testing

@testable import ShmRing

#if canImport(Glibc)
import Glibc
#endif

extension MultiProcess {
    /// Gating and lossy consumers on one ring across processes, the producer at full speed
    /// (release-built peer). Exact loss accounting is checked, not timing: the slow consumers are
    /// stopped with SIGSTOP while the producer publishes far more than a lap.
    @Suite struct RingLossyAcrossProcessesTests {
        static var messages: Int {
            getenv("SHMRING_RING_MESSAGES").flatMap { Int(String(cString: $0)) } ?? 1_000_000
        }

        /// Reads a file of little-endian UInt64s.
        func words(_ path: String) throws -> [UInt64] {
            let data = try Data(contentsOf: URL(fileURLWithPath: path))
            return data.withUnsafeBytes { Array($0.bindMemory(to: UInt64.self)) }
        }

        /// A fast gating consumer sees everything; a lossy consumer (paused with SIGSTOP, and
        /// sleeping now and then) delivers + misses exactly what was published, every delivered
        /// message verifies, and every resumption is at the oldest intact record (checked against
        /// the producer's log of positions); a gating consumer with a lag limit, paused, is demoted,
        /// told, and then accounts exactly as a lossy one.
        @Test func gatingLossyAndDemotedConsumersAccountForEveryMessage() throws {
            let key = uniqueKey()
            let messages = Self.messages
            let capacity = 1 << 16
            let maxSize = 128
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent(key).path
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: directory) }
            let producer = try ChildProcess(
                TestPeer.forHeavyLoops,
                [
                    "ring-produce", "--key", key, "--count", "\(messages)", "--wait-consumers", "3",
                    "--capacity", "\(capacity)", "--max-size", "\(maxSize)", "--large-every", "0",
                    "--log", "\(directory)/producer.log",
                ])
            try #require(producer.waitForReady("created"))
            let gating = try ChildProcess(
                TestPeer.forHeavyLoops, ["ring-consume", "--key", key, "--count", "\(messages)", "--from", "oldest"])
            let lossy = try ChildProcess(
                TestPeer.forHeavyLoops,
                [
                    "ring-consume-lossy", "--key", key, "--until", "\(messages)", "--sleep-every", "1000",
                    "--sleep-us", "1000", "--events", "\(directory)/lossy.events",
                ])
            let limited = try ChildProcess(
                TestPeer.forHeavyLoops,
                [
                    "ring-consume-lossy", "--key", key, "--until", "\(messages)", "--policy", "gating",
                    "--lag-bytes", "\(capacity / 2)", "--sleep-every", "20000", "--sleep-us", "500",
                    "--events", "\(directory)/limited.events",
                ])
            try #require(gating.waitForReady("attached"))
            try #require(lossy.waitForReady("attached"))
            try #require(limited.waitForReady("attached"))
            // Paused while the producer publishes far more than a lap: the lossy consumer is
            // lapped at least once (then it reads on, sleeping now and then, and may be lapped
            // again), and the limited one must be demoted, or the producer would wait for ever.
            lossy.signal(SIGSTOP)
            limited.signal(SIGSTOP)
            try #require(producer.waitForReady("half", timeout: .seconds(600)))
            lossy.signal(SIGCONT)
            try #require(producer.waitForReady("published", timeout: .seconds(600)))
            limited.signal(SIGCONT)
            #expect(gating.wait(timeout: .seconds(600)) == .exited(0), "\(gating.standardError)")
            #expect(gating.results["received"] == "\(messages)")
            #expect(gating.results["gaps"] == "0" && gating.results["corrupted"] == "0", "\(gating.results)")
            let log = try words("\(directory)/producer.log")
            #expect(log.count == 2 * messages)
            let maxRecord = UInt64(RingLayout.align(RingLayout.recordHeaderSize + maxSize, 16))
            for (name, reader, demoted) in [("lossy", lossy, 0), ("limited", limited, 1)] {
                #expect(reader.wait(timeout: .seconds(600)) == .exited(0), "\(name): \(reader.standardError)")
                let results = reader.results
                let delivered = UInt64(results["delivered"] ?? "") ?? 0
                let lapped = UInt64(results["lapped_messages"] ?? "") ?? 0
                // Exact: delivered + missed = published (from the consumer's first sequence on,
                // which is 0: it attached before the producer started).
                #expect(delivered + lapped == UInt64(messages), "\(name): \(results)")
                #expect(results["reported_missed"] == results["lapped_messages"], "\(name): \(results)")
                #expect(lapped > 0, "\(name) was never lapped: \(results)")
                #expect(results["unreported_gaps"] == "0" && results["corrupted"] == "0", "\(name): \(results)")
                #expect(results["demoted"] == "\(demoted)", "\(name): \(results)")
                // Every resumption: the record really was there (the producer's log), it was
                // intact (at or after the lap's floor), and it was the oldest intact one up to the
                // boundary index's granularity (a sixteenth of the ring, plus a record).
                let events = try words("\(directory)/\(name).events")
                #expect(events.count / 5 == Int(results["resumptions"] ?? "") ?? -1)
                var checked = 0
                for event in stride(from: 0, to: events.count, by: 5) {
                    let (resumedSequence, resumedPosition) = (events[event + 1], events[event + 2])
                    // The floor when the lap was found, and when the resumption point had been
                    // chosen: the producer goes on meanwhile, and the oldest intact record with it.
                    let (floor, laterFloor) = (events[event + 3], events[event + 4])
                    let index = Int(resumedSequence)
                    guard index < messages else {
                        Issue.record("\(name): resumed at sequence \(resumedSequence)")
                        continue
                    }
                    #expect(log[2 * index] == resumedSequence && log[2 * index + 1] == resumedPosition, "\(name)")
                    #expect(Int64(bitPattern: resumedPosition &- floor) >= 0, "\(name): resumed before the floor")
                    // The oldest intact record when the point was chosen: the first whose position
                    // is at or after the later floor. The resumption is at most a sixteenth of the
                    // ring (the index's granularity) and a record after it.
                    var low = 0
                    var high = index
                    while low < high {
                        let middle = (low + high) / 2
                        if Int64(bitPattern: log[2 * middle + 1] &- laterFloor) >= 0 {
                            high = middle
                        } else {
                            low = middle + 1
                        }
                    }
                    let after = Int64(bitPattern: resumedPosition &- log[2 * low + 1])
                    #expect(
                        after <= Int64(capacity / 16) + Int64(maxRecord),
                        "\(name): resumed \(after) bytes after the oldest intact record")
                    checked += 1
                }
                print(
                    "lossy across processes (\(name)): published \(messages), delivered \(delivered), missed \(lapped) "
                        + "(\(results["lapped_bytes"] ?? "?") ring bytes) in \(checked) resumptions, demoted "
                        + "\(results["demoted"] ?? "?"), cannot keep up \(results["cannot_keep_up"] ?? "?")")
            }
            #expect(producer.wait(timeout: .seconds(600)) == .exited(0), "\(producer.standardError)")
            #expect(producer.results["published"] == "\(messages)")
        }
    }
}
