import CShmAtomics
import Testing

@testable import ShmRing

/// The Swift layout type and the C mirror (CShmRingLayout.h) must agree on every offset.
@Suite struct RingLayoutTests {
    func offset<T>(_ path: PartialKeyPath<T>) -> Int { MemoryLayout<T>.offset(of: path)! }

    @Test func theConfigurationGroupMatches() {
        typealias C = CShmRing_config
        let pairs: [(String, Int, Int)] = [
            ("magic", RingLayout.Config.magic, offset(\C.magic)),
            ("layoutVersion", RingLayout.Config.layoutVersion, offset(\C.layout_version)),
            ("endianness", RingLayout.Config.endianness, offset(\C.endianness)),
            ("wordSize", RingLayout.Config.wordSize, offset(\C.word_size)),
            ("cacheLineSize", RingLayout.Config.cacheLineSize, offset(\C.cache_line_size)),
            ("capacity", RingLayout.Config.capacity, offset(\C.capacity)),
            ("alignment", RingLayout.Config.alignment, offset(\C.alignment)),
            ("maxMessageLength", RingLayout.Config.maxMessageLength, offset(\C.max_message_length)),
            ("maxConsumers", RingLayout.Config.maxConsumers, offset(\C.max_consumers)),
            ("recordHeaderSize", RingLayout.Config.recordHeaderSize, offset(\C.record_header_size)),
            ("dataOffset", RingLayout.Config.dataOffset, offset(\C.data_offset)),
            ("segmentIDHigh", RingLayout.Config.segmentIDHigh, offset(\C.segment_id_high)),
            ("segmentIDLow", RingLayout.Config.segmentIDLow, offset(\C.segment_id_low)),
            ("salt", RingLayout.Config.salt, offset(\C.salt)),
            ("typeNameHash", RingLayout.Config.typeNameHash, offset(\C.type_name_hash)),
            ("typeSize", RingLayout.Config.typeSize, offset(\C.type_size)),
            ("typeStride", RingLayout.Config.typeStride, offset(\C.type_stride)),
            ("typeAlignment", RingLayout.Config.typeAlignment, offset(\C.type_alignment)),
            ("typeVersion", RingLayout.Config.typeVersion, offset(\C.type_version)),
            ("flags", RingLayout.Config.flags, offset(\C.flags)),
            ("producerPID", RingLayout.Config.producerPID, offset(\C.producer_pid)),
        ]
        for (name, swift, c) in pairs { #expect(swift == c, "config.\(name)") }
        #expect(MemoryLayout<C>.size == RingLayout.group)
    }

    @Test func theProducerCountersAndBoundaryGroupsMatch() {
        typealias H = CShmRing_header
        typealias P = CShmRing_producer
        let producer = offset(\H.producer)
        #expect(producer == RingLayout.Producer.base)
        #expect(producer + offset(\P.tail_intent) == RingLayout.Producer.tailIntent)
        #expect(producer + offset(\P.tail_version) == RingLayout.Producer.tailVersion)
        #expect(producer + offset(\P.tail) == RingLayout.Producer.tail)
        #expect(producer + offset(\P.tail_sequence) == RingLayout.Producer.tailSequence)
        #expect(producer + offset(\P.limit) == RingLayout.Producer.limit)
        #expect(producer + offset(\P.epoch) == RingLayout.Producer.epoch)
        #expect(producer + offset(\P.wake_word) == RingLayout.Producer.wakeWord)
        typealias K = CShmRing_counters
        let counters = offset(\H.counters)
        #expect(counters == RingLayout.Counters.base)
        #expect(counters + offset(\K.published_messages) == RingLayout.Counters.publishedMessages)
        #expect(counters + offset(\K.published_bytes) == RingLayout.Counters.publishedBytes)
        #expect(counters + offset(\K.back_pressure_events) == RingLayout.Counters.backPressureEvents)
        #expect(counters + offset(\K.demotions) == RingLayout.Counters.demotions)
        #expect(counters + offset(\K.evictions) == RingLayout.Counters.evictions)
        typealias B = CShmRing_boundary
        #expect(offset(\H.boundaries) == RingLayout.Boundary.base)
        #expect(MemoryLayout<B>.stride == RingLayout.Boundary.stride)
        #expect(offset(\B.version) == RingLayout.Boundary.version)
        #expect(offset(\B.position) == RingLayout.Boundary.position)
        #expect(offset(\B.sequence) == RingLayout.Boundary.sequence)
        #expect(MemoryLayout<H>.size <= RingLayout.dataOffset)
        #expect(Int(CSHMRING_DATA_OFFSET) == RingLayout.dataOffset)
        #expect(Int(CSHMRING_BOUNDARY_ENTRIES) == RingLayout.boundaryEntries)
        #expect(CSHMRING_MAGIC == RingLayout.magic)
        #expect(CSHMRING_LAYOUT_VERSION == RingLayout.version)
        #expect(CSHMRING_SEQUENCE_MASK == RingLayout.sequenceMask)
    }

    @Test func theRecordAndSlotMatch() {
        typealias R = CShmRing_record
        #expect(MemoryLayout<R>.size == RingLayout.recordHeaderSize)
        #expect(offset(\R.commit) == RingLayout.Record.commit)
        #expect(offset(\R.length) == RingLayout.Record.length)
        #expect(offset(\R.type) == RingLayout.Record.type)
        typealias S = CShmRing_slot
        #expect(offset(\S.cursor) == RingLayout.Slot.cursor)
        #expect(offset(\S.active) == RingLayout.Slot.active)
        #expect(offset(\S.policy) == RingLayout.Slot.policy)
        #expect(offset(\S.pid) == RingLayout.Slot.pid)
        #expect(offset(\S.delivered) == RingLayout.Slot.delivered)
        #expect(offset(\S.delivered_bytes) == RingLayout.Slot.deliveredBytes)
        #expect(offset(\S.lapped_messages) == RingLayout.Slot.lappedMessages)
        #expect(offset(\S.lapped_bytes) == RingLayout.Slot.lappedBytes)
        #expect(offset(\S.joined) == RingLayout.Slot.joined)
        #expect(offset(\S.lag_limit_bytes) == RingLayout.Slot.lagLimitBytes)
        #expect(offset(\S.lag_limit_nanoseconds) == RingLayout.Slot.lagLimitNanoseconds)
        #expect(offset(\S.sleeping) == RingLayout.Slot.sleeping)
        #expect(offset(\S.generation) == RingLayout.Slot.generation)
        #expect(offset(\S.notice) == RingLayout.Slot.notice)
        #expect(CSHMRING_NOTICE_DEMOTED == RingLayout.noticeDemoted)
        #expect(CSHMRING_NOTICE_EVICTED == RingLayout.noticeEvicted)
        #expect(MemoryLayout<S>.size <= RingLayout.slotSize)
    }
}
