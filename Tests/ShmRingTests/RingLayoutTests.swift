import CShmAtomics
import Foundation
import Testing

@testable import ShmRing

/// The layout has one source, CShmRingLayout.h; Swift names its constants, so the two cannot
/// disagree. What can still drift is the page that draws it: every offset in docs/layout.md's
/// tables is checked against the header here, and every field Swift uses must be in a table.
@Suite struct RingLayoutTests {
    /// Each table of docs/layout.md, by its section's heading, and the header's offset of each
    /// field (for the boundary index and records: within an entry, a record).
    static let fields: [String: [String: Int]] = [
        "Configuration": [
            "magic": RingLayout.Config.magic, "layout_version": RingLayout.Config.layoutVersion,
            "endianness": RingLayout.Config.endianness, "word_size": RingLayout.Config.wordSize,
            "cache_line_size": RingLayout.Config.cacheLineSize, "capacity": RingLayout.Config.capacity,
            "alignment": RingLayout.Config.alignment, "max_message_length": RingLayout.Config.maxMessageLength,
            "max_consumers": RingLayout.Config.maxConsumers, "record_header_size": RingLayout.Config.recordHeaderSize,
            "data_offset": RingLayout.Config.dataOffset, "segment_id_high": RingLayout.Config.segmentIDHigh,
            "segment_id_low": RingLayout.Config.segmentIDLow, "salt": RingLayout.Config.salt,
            "type_name_hash": RingLayout.Config.typeNameHash, "type_size": RingLayout.Config.typeSize,
            "type_stride": RingLayout.Config.typeStride, "type_alignment": RingLayout.Config.typeAlignment,
            "type_version": RingLayout.Config.typeVersion, "flags": RingLayout.Config.flags,
            "producer_pid": RingLayout.Config.producerPID,
        ],
        "Producer line": [
            "tail_intent": RingLayout.Producer.tailIntent, "tail_version": RingLayout.Producer.tailVersion,
            "tail": RingLayout.Producer.tail, "tail_sequence": RingLayout.Producer.tailSequence,
            "limit": RingLayout.Producer.limit,
        ],
        "Wake-up group": [
            "data_epoch": RingLayout.Wake.dataEpoch, "wakes": RingLayout.Wake.wakes,
            "producer_waiting": RingLayout.Wake.producerWaiting, "producer_sleeps": RingLayout.Wake.producerSleeps,
        ],
        "Doorbell": [
            "magic": RingLayout.Doorbell.magicOffset, "data_waiting": RingLayout.Doorbell.dataWaiting,
            "sleepers": RingLayout.Doorbell.sleepers, "pass_on": RingLayout.Doorbell.passOn,
        ],
        "Counters": [
            "published_messages": RingLayout.Counters.publishedMessages,
            "published_bytes": RingLayout.Counters.publishedBytes,
            "back_pressure_events": RingLayout.Counters.backPressureEvents,
            "demotions": RingLayout.Counters.demotions, "evictions": RingLayout.Counters.evictions,
        ],
        "Boundary index": [
            "version": RingLayout.Boundary.version, "position": RingLayout.Boundary.position,
            "sequence": RingLayout.Boundary.sequence,
        ],
        "Records": [
            "commit": RingLayout.Record.commit, "length": RingLayout.Record.length, "type": RingLayout.Record.type,
        ],
        "Consumer slot": [
            "cursor": RingLayout.Slot.cursor, "active": RingLayout.Slot.active, "policy": RingLayout.Slot.policy,
            "pid": RingLayout.Slot.pid, "delivered": RingLayout.Slot.delivered,
            "delivered_bytes": RingLayout.Slot.deliveredBytes, "lapped_messages": RingLayout.Slot.lappedMessages,
            "lapped_bytes": RingLayout.Slot.lappedBytes, "joined": RingLayout.Slot.joined,
            "lag_limit_bytes": RingLayout.Slot.lagLimitBytes,
            "lag_limit_nanoseconds": RingLayout.Slot.lagLimitNanoseconds, "sleeping": RingLayout.Slot.sleeping,
            "space_epoch": RingLayout.Slot.spaceEpoch,
            "sleeps": RingLayout.Slot.sleeps, "woken": RingLayout.Slot.woken,
            "announced": RingLayout.Slot.announced, "counted_waits": RingLayout.Slot.countedWaits,
            "generation": RingLayout.Slot.generation, "notice": RingLayout.Slot.notice,
        ],
    ]

    /// The rows `| offset | `field` | ...` of docs/layout.md, by section heading.
    static func documentedOffsets() throws -> [String: [String: Int]] {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        let text = try String(contentsOf: root.appendingPathComponent("docs/layout.md"), encoding: .utf8)
        var tables: [String: [String: Int]] = [:]
        var section = ""
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("## ") {
                section = fields.keys.first { line.dropFirst(3).hasPrefix($0) } ?? String(line.dropFirst(3))
                continue
            }
            let cells = line.split(separator: "|", omittingEmptySubsequences: false).map {
                $0.trimmingCharacters(in: .whitespaces)
            }
            guard cells.count > 3, let offset = Int(cells[1]), cells[2].hasPrefix("`"), cells[2].hasSuffix("`")
            else { continue }
            tables[section, default: [:]][String(cells[2].dropFirst().dropLast())] = offset
        }
        return tables
    }

    @Test func everyOffsetOnTheLayoutPageIsTheHeaders() throws {
        let documented = try Self.documentedOffsets()
        for (section, expected) in Self.fields {
            let table = documented[section] ?? [:]
            #expect(!table.isEmpty, "docs/layout.md has no table under \"\(section)\"")
            for (field, offset) in expected {
                #expect(table[field] == offset, "\(section): `\(field)` is at \(offset) in CShmRingLayout.h")
            }
            for field in table.keys where expected[field] == nil {
                Issue.record("\(section): docs/layout.md documents `\(field)`, which the header does not have")
            }
        }
    }

    /// What the producer and the readers rely on beyond the offsets.
    @Test func theLayoutKeepsItsPromises() {
        #expect(RingLayout.Producer.tailIntent % RingLayout.group == 0, "the producer line starts a group")
        #expect(RingLayout.Counters.publishedMessages % RingLayout.group == 0, "the counters start a group")
        #expect(RingLayout.Wake.dataEpoch % RingLayout.group == 0, "the wake-up group starts a group")
        #expect(RingLayout.Wake.dataEpoch % 4 == 0 && RingLayout.Doorbell.dataWaiting % 4 == 0, "32-bit words")
        #expect(RingLayout.Doorbell.sleepers % 4 == 0 && RingLayout.Doorbell.passOn % 4 == 0, "32-bit words")
        #expect(RingLayout.Slot.sleeping % RingLayout.group == 0 && RingLayout.Slot.generation % RingLayout.group == 0)
        #expect(RingLayout.Record.length == 8 && RingLayout.Record.type == 12, "length and type form one word")
        #expect(
            RingLayout.Boundary.base + RingLayout.boundaryEntries * RingLayout.Boundary.stride <= RingLayout.dataOffset)
        #expect(RingLayout.flagRefusesGating == 1)
    }
}
