// CShmRingLayout: the ring's shared-memory layout, version 5, as C structs.
//
// The one source of the layout: the structs, their _Static_asserts, the commit-word functions, and
// the enum of offsets that Swift's `RingLayout` (Sources/ShmRing/Ring/RingLayout.swift) takes
// every offset from. docs/layout.md draws it. The perf/ C twin of the ring includes this header,
// so the twin and ShmRing share one record format by construction.
//
// Fields are grouped by writer: a cache-line group is written by one party only.
#ifndef CSHMRINGLAYOUT_H
#define CSHMRINGLAYOUT_H

#include <stddef.h>
#include <stdint.h>

#define CSHMRING_MAGIC 0x31474e49524d4853ULL  // "SHMRING1" little-endian
#define CSHMRING_LAYOUT_VERSION 6u
#define CSHMRING_ENDIANNESS_MARK 0x01020304u
#define CSHMRING_LINE 64u
/// Two cache lines: a group of fields is padded to 128 bytes (adjacent-line prefetch).
#define CSHMRING_GROUP 128u
#define CSHMRING_DATA_OFFSET 4096u
#define CSHMRING_BOUNDARY_ENTRIES 16u
#define CSHMRING_RECORD_HEADER 16u
/// Sequence numbers are 63 bits wide (they wrap at 2^63).
#define CSHMRING_SEQUENCE_MASK 0x7fffffffffffffffULL
/// Config flags: the producer refuses gating consumers.
#define CSHMRING_FLAG_REFUSES_GATING 1u
/// The size of a consumer slot's memfd (one page: CShmRing_slot fits in it).
#define CSHMRING_SLOT_PAGE 4096u
/// A slot's notice bits: demoted to lossy, evicted.
#define CSHMRING_NOTICE_DEMOTED 1ULL
#define CSHMRING_NOTICE_EVICTED 2ULL
#define CSHMRING_DOORBELL_MAGIC 0x4c4c4542524f4f44ULL  // "DOORBELL" little-endian
/// The size of the doorbell's memfd (one page).
#define CSHMRING_DOORBELL_PAGE 4096u

/// Commit words (docs/layout.md, "Records"). A reader judges a record by one 8-byte word, so the
/// word must not be forgeable by what the ring holds from earlier laps:
///
///   record:  commit = CShmRing_sequence_mix(sequence ^ salt) ^ CShmRing_record_shape(length, type)
///   padding: commit = CShmRing_sequence_mix(sequence ^ salt) ^ CSHMRING_PADDING_SHAPE
///
/// - Every bit of the word depends on every bit of the sequence (a bijective mix): the words of
///   two records a few sequence numbers apart differ in about half of their 64 bits, not only in
///   their low bits. A word whose low bytes were overwritten by a later payload therefore matches
///   an expected word only if its surviving high bytes do, about 2^-8 per surviving byte, whoever
///   wrote the low bytes (layout 2 XORed the plain sequence: old and expected words two laps apart
///   shared their high 56 bits, and one payload byte in 256 forged a commit). The producer also
///   writes every word a reader may interpret whole (RingProducer: the payload's last word is
///   zeroed before it is copied), so such hybrids do not arise from the library's own writes.
/// - The salt is random per ring and goes in before the mix, so which sequences' words resemble
///   each other differs from ring to ring, and payload bytes cannot predict a word.
/// - The shape binds the record's own header (length, type) to the word: a header of another lap
///   never passes under it. Its bit 63 is clear and the padding shape's is set, so a record and a
///   padding record of the same sequence differ.

/// A bijective 64-bit mix (the SplitMix64 finalizer, Stafford's variant 13): every output bit
/// depends on every input bit.
static inline __attribute__((always_inline)) uint64_t CShmRing_sequence_mix(uint64_t value) {
    value = (value ^ (value >> 30)) * 0xBF58476D1CE4E5B9ULL;
    value = (value ^ (value >> 27)) * 0x94D049BB133111EBULL;
    return value ^ (value >> 31);
}

/// The shape of a record header read as one little-endian word (length in the low half, type in
/// the high half, as CShmRing_record lays them out): a multiplicative hash, bit 63 clear. Readers
/// load the header as that one word and hash it without splitting it.
static inline __attribute__((always_inline)) uint64_t CShmRing_header_shape(uint64_t header) {
    return (header * 0x9E3779B97F4A7C15ULL) >> 1;
}

/// A record header's word: what the producer stores at `length` (one 8-byte store).
static inline __attribute__((always_inline)) uint64_t CShmRing_header_word(uint32_t length, uint32_t type) {
    return ((uint64_t)type << 32) | length;
}

/// A record's length and type as a word (CShmRing_header_shape of its header word).
static inline __attribute__((always_inline)) uint64_t CShmRing_record_shape(uint32_t length, uint32_t type) {
    return CShmRing_header_shape(CShmRing_header_word(length, type));
}

/// What a padding record mixes in instead of a shape (bit 63 set: never a record's shape).
#define CSHMRING_PADDING_SHAPE 0xD6E8FEB86659FD93ULL

/// The commit word of the record with `sequence`, `length` and `type` in a ring with `salt`.
static inline __attribute__((always_inline)) uint64_t CShmRing_record_word(
    uint64_t sequence, uint64_t salt, uint32_t length, uint32_t type) {
    return CShmRing_sequence_mix((sequence & CSHMRING_SEQUENCE_MASK) ^ salt) ^ CShmRing_record_shape(length, type);
}

/// The commit word of a padding record that precedes the record with `sequence`.
static inline __attribute__((always_inline)) uint64_t CShmRing_padding_word(uint64_t sequence, uint64_t salt) {
    return CShmRing_sequence_mix((sequence & CSHMRING_SEQUENCE_MASK) ^ salt) ^ CSHMRING_PADDING_SHAPE;
}

/// Written once by the creator before any consumer can attach; read by everyone.
typedef struct {
    uint64_t magic;
    uint32_t layout_version;
    uint32_t endianness;
    uint32_t word_size;
    uint32_t cache_line_size;
    uint64_t capacity;
    uint32_t alignment;
    uint32_t max_message_length;
    uint32_t max_consumers;
    uint32_t record_header_size;
    uint64_t data_offset;
    uint64_t segment_id_high;
    uint64_t segment_id_low;
    uint64_t salt;
    uint64_t type_name_hash;
    uint32_t type_size;
    uint32_t type_stride;
    uint32_t type_alignment;
    uint32_t type_version;
    uint32_t flags;
    uint32_t producer_pid;
    uint8_t reserved[CSHMRING_GROUP - 112];
} CShmRing_config;

/// Written by the producer only.
typedef struct {
    /// The end of the space claimed so far (>= tail): what a lossy reader checks for laps.
    uint64_t tail_intent;
    /// Seqlock over (tail, tail_sequence): odd while they change.
    uint64_t tail_version;
    /// The end of the committed records, published every 64 records or a sixteenth of the ring,
    /// at the end of every batch and when the producer looks at its consumers (layout 4): it lags
    /// the records by that much at most. Readers find the true end by following commit words.
    uint64_t tail;
    /// The sequence number of the record at `tail`.
    uint64_t tail_sequence;
    /// The producer will not write at or beyond this position until it has looked at the
    /// consumers again (gating minimum + capacity). Joiners validate against it.
    uint64_t limit;
    uint8_t reserved[CSHMRING_GROUP - 40];
} CShmRing_producer;

/// Written by the producer only, once per commit (statistics).
typedef struct {
    uint64_t published_messages;
    uint64_t published_bytes;
    uint64_t back_pressure_events;
    /// Gating consumers demoted to lossy by their lag limit.
    uint64_t demotions;
    /// Consumers evicted for a control page holding a value that cannot be right.
    uint64_t evictions;
    uint8_t reserved[CSHMRING_GROUP - 40];
} CShmRing_counters;

/// The position and sequence of the first record that starts in one sixteenth of the ring,
/// under a seqlock (odd `version` while it changes). Written by the producer only.
typedef struct {
    uint64_t version;
    uint64_t position;
    uint64_t sequence;
    uint64_t reserved;
} CShmRing_boundary;

/// The wake-up group (docs/wakeup.md): written by the producer only, and only when it wakes
/// sleeping consumers, never on a publish that finds nobody asleep.
typedef struct {
    /// The consumers' futex word: a sleeping consumer waits for it to change; the producer adds 1
    /// before every wake.
    uint32_t data_epoch;
    uint32_t reserved0;
    /// How many wakes the producer issued (one FUTEX_WAKE each, however many slept).
    uint64_t wakes;
    uint8_t reserved1[CSHMRING_LINE - 16];
    // Second line: read by gating consumers after every poll that moved their cursor, written by
    // the producer only when it goes to sleep on a full ring and when it wakes.
    /// The producer sleeps for space: `slot << 32 | (space_epoch + 1)` of the consumer holding it
    /// back (that consumer's slot page holds `space_epoch`); 0 while it does not.
    uint64_t producer_waiting;
    /// How many times the producer slept on a full ring.
    uint64_t producer_sleeps;
    uint8_t reserved2[CSHMRING_LINE - 16];
} CShmRing_wake;

/// The header memfd: configuration, producer, counters, boundary index, wake-up group; the data
/// region starts at CSHMRING_DATA_OFFSET. Sealed F_SEAL_FUTURE_WRITE: only the producer's mapping
/// writes it.
typedef struct {
    CShmRing_config config;
    CShmRing_producer producer;
    CShmRing_counters counters;
    CShmRing_boundary boundaries[CSHMRING_BOUNDARY_ENTRIES];
    CShmRing_wake wake;
} CShmRing_header;

/// The doorbell: one page in a memfd of its own that every consumer maps writable (the header is
/// the producer's alone, and a consumer's slot page is read only when the producer scans, never
/// on a publish). The producer reads `data_waiting` after every publish and every batch; nothing
/// in the page is trusted: a wrong value costs a spurious wake or a sleep that lasts until its
/// timeout (docs/wakeup.md, "What a hostile consumer can do").
typedef struct {
    uint64_t magic;
    /// `data_epoch + 1` for the epoch sleeping consumers wait on, 0 when none has waited yet;
    /// raised by compare-and-swap, never lowered by a consumer.
    uint32_t data_waiting;
    /// How many consumers sleep on `data_epoch` (each adds 1 before it sleeps and takes 1 back
    /// after): a hint, read by the producer when it wakes, to decide whether the consumer it wakes
    /// must pass the wake on.
    uint32_t sleepers;
    /// The epoch whose wake must be passed on to every sleeper (0: none): the producer wakes one
    /// consumer, and the first consumer to take this token (compare-and-swap to 0) wakes the rest.
    uint32_t pass_on;
    uint32_t reserved0;
    uint8_t reserved[CSHMRING_GROUP - 24];
} CShmRing_doorbell;

/// A record's header in the data region; the payload follows, the record is padded to the
/// ring's alignment. `commit` is written last (release): see CShmRing_record_word. `length` and
/// `type` are written together, as one 8-byte store.
typedef struct {
    uint64_t commit;
    uint32_t length;
    uint32_t type;
} CShmRing_record;

/// One consumer slot: a page in a memfd of its own, fresh for every attachment. The consumer writes
/// its line (the producer trusts none of it); the producer writes the owner line.
typedef struct {
    // Consumer line.
    uint64_t cursor;
    /// Equal to the generation the producer handed out while the consumer is registered.
    uint64_t active;
    /// 1 gating, 2 lossy (for observers: the producer keeps the policy it granted).
    uint32_t policy;
    uint32_t pid;
    uint64_t delivered;
    uint64_t delivered_bytes;
    /// Messages and ring bytes this consumer missed because it was lapped.
    uint64_t lapped_messages;
    uint64_t lapped_bytes;
    /// Equal to the generation once the join was validated (only then can a bad cursor evict).
    uint64_t joined;
    /// The consumer's lag limit (0: none): demote it to lossy beyond this many bytes ...
    uint64_t lag_limit_bytes;
    /// ... or once it has held the producer back this long.
    uint64_t lag_limit_nanoseconds;
    uint8_t reserved0[CSHMRING_GROUP - 80];
    // Sleeping line: written by the consumer (statistics; the producer never reads it).
    /// 1 while the consumer is inside a wait (announced, or asleep).
    uint32_t sleeping;
    /// The producer's futex word when this consumer holds it back on a full ring: the consumer
    /// adds 1 before it wakes the producer.
    uint32_t space_epoch;
    /// Waits that went to sleep (the kernel queued the consumer).
    uint64_t sleeps;
    /// Waits that ended because the producer woke the consumer.
    uint64_t woken;
    /// Waits that announced themselves in the doorbell (each may cost the producer one wake,
    /// whether it then slept or found a message on its last look).
    uint64_t announced;
    /// Futex waits this consumer has counted in the doorbell's `sleepers` and not counted out
    /// yet: when the consumer dies, the producer's server takes them back out of `sleepers`.
    uint32_t counted_waits;
    uint32_t reserved4;
    uint8_t reserved2[CSHMRING_GROUP - 40];
    // Owner line: written by the producer. `generation` is a copy for the consumer and observers
    // (the producer's own copy is private); `notice` is `generation << 2 | CSHMRING_NOTICE_*`.
    uint64_t generation;
    uint64_t notice;
    uint8_t reserved3[CSHMRING_GROUP - 16];
} CShmRing_slot;

/// Every offset the library uses, from the structs above: Swift takes them from here
/// (`RingLayout` names them), so no offset is ever written down twice.
enum {
    // The header memfd.
    CSHMRING_OFFSET_MAGIC = offsetof(CShmRing_header, config.magic),
    CSHMRING_OFFSET_LAYOUT_VERSION = offsetof(CShmRing_header, config.layout_version),
    CSHMRING_OFFSET_ENDIANNESS = offsetof(CShmRing_header, config.endianness),
    CSHMRING_OFFSET_WORD_SIZE = offsetof(CShmRing_header, config.word_size),
    CSHMRING_OFFSET_CACHE_LINE_SIZE = offsetof(CShmRing_header, config.cache_line_size),
    CSHMRING_OFFSET_CAPACITY = offsetof(CShmRing_header, config.capacity),
    CSHMRING_OFFSET_ALIGNMENT = offsetof(CShmRing_header, config.alignment),
    CSHMRING_OFFSET_MAX_MESSAGE_LENGTH = offsetof(CShmRing_header, config.max_message_length),
    CSHMRING_OFFSET_MAX_CONSUMERS = offsetof(CShmRing_header, config.max_consumers),
    CSHMRING_OFFSET_RECORD_HEADER_SIZE = offsetof(CShmRing_header, config.record_header_size),
    CSHMRING_OFFSET_DATA_OFFSET = offsetof(CShmRing_header, config.data_offset),
    CSHMRING_OFFSET_SEGMENT_ID_HIGH = offsetof(CShmRing_header, config.segment_id_high),
    CSHMRING_OFFSET_SEGMENT_ID_LOW = offsetof(CShmRing_header, config.segment_id_low),
    CSHMRING_OFFSET_SALT = offsetof(CShmRing_header, config.salt),
    CSHMRING_OFFSET_TYPE_NAME_HASH = offsetof(CShmRing_header, config.type_name_hash),
    CSHMRING_OFFSET_TYPE_SIZE = offsetof(CShmRing_header, config.type_size),
    CSHMRING_OFFSET_TYPE_STRIDE = offsetof(CShmRing_header, config.type_stride),
    CSHMRING_OFFSET_TYPE_ALIGNMENT = offsetof(CShmRing_header, config.type_alignment),
    CSHMRING_OFFSET_TYPE_VERSION = offsetof(CShmRing_header, config.type_version),
    CSHMRING_OFFSET_FLAGS = offsetof(CShmRing_header, config.flags),
    CSHMRING_OFFSET_PRODUCER_PID = offsetof(CShmRing_header, config.producer_pid),
    CSHMRING_OFFSET_TAIL_INTENT = offsetof(CShmRing_header, producer.tail_intent),
    CSHMRING_OFFSET_TAIL_VERSION = offsetof(CShmRing_header, producer.tail_version),
    CSHMRING_OFFSET_TAIL = offsetof(CShmRing_header, producer.tail),
    CSHMRING_OFFSET_TAIL_SEQUENCE = offsetof(CShmRing_header, producer.tail_sequence),
    CSHMRING_OFFSET_LIMIT = offsetof(CShmRing_header, producer.limit),
    CSHMRING_OFFSET_PUBLISHED_MESSAGES = offsetof(CShmRing_header, counters.published_messages),
    CSHMRING_OFFSET_PUBLISHED_BYTES = offsetof(CShmRing_header, counters.published_bytes),
    CSHMRING_OFFSET_BACK_PRESSURE_EVENTS = offsetof(CShmRing_header, counters.back_pressure_events),
    CSHMRING_OFFSET_DEMOTIONS = offsetof(CShmRing_header, counters.demotions),
    CSHMRING_OFFSET_EVICTIONS = offsetof(CShmRing_header, counters.evictions),
    CSHMRING_OFFSET_BOUNDARIES = offsetof(CShmRing_header, boundaries),
    CSHMRING_BOUNDARY_STRIDE = sizeof(CShmRing_boundary),
    CSHMRING_BOUNDARY_VERSION = offsetof(CShmRing_boundary, version),
    CSHMRING_BOUNDARY_POSITION = offsetof(CShmRing_boundary, position),
    CSHMRING_BOUNDARY_SEQUENCE = offsetof(CShmRing_boundary, sequence),
    CSHMRING_OFFSET_DATA_EPOCH = offsetof(CShmRing_header, wake.data_epoch),
    CSHMRING_OFFSET_WAKES = offsetof(CShmRing_header, wake.wakes),
    CSHMRING_OFFSET_PRODUCER_WAITING = offsetof(CShmRing_header, wake.producer_waiting),
    CSHMRING_OFFSET_PRODUCER_SLEEPS = offsetof(CShmRing_header, wake.producer_sleeps),
    // The doorbell page.
    CSHMRING_DOORBELL_MAGIC_OFFSET = offsetof(CShmRing_doorbell, magic),
    CSHMRING_DOORBELL_DATA_WAITING = offsetof(CShmRing_doorbell, data_waiting),
    CSHMRING_DOORBELL_SLEEPERS = offsetof(CShmRing_doorbell, sleepers),
    CSHMRING_DOORBELL_PASS_ON = offsetof(CShmRing_doorbell, pass_on),
    // A record, from its start.
    CSHMRING_RECORD_COMMIT = offsetof(CShmRing_record, commit),
    CSHMRING_RECORD_LENGTH = offsetof(CShmRing_record, length),
    CSHMRING_RECORD_TYPE = offsetof(CShmRing_record, type),
    // A consumer slot page.
    CSHMRING_SLOT_CURSOR = offsetof(CShmRing_slot, cursor),
    CSHMRING_SLOT_ACTIVE = offsetof(CShmRing_slot, active),
    CSHMRING_SLOT_POLICY = offsetof(CShmRing_slot, policy),
    CSHMRING_SLOT_PID = offsetof(CShmRing_slot, pid),
    CSHMRING_SLOT_DELIVERED = offsetof(CShmRing_slot, delivered),
    CSHMRING_SLOT_DELIVERED_BYTES = offsetof(CShmRing_slot, delivered_bytes),
    CSHMRING_SLOT_LAPPED_MESSAGES = offsetof(CShmRing_slot, lapped_messages),
    CSHMRING_SLOT_LAPPED_BYTES = offsetof(CShmRing_slot, lapped_bytes),
    CSHMRING_SLOT_JOINED = offsetof(CShmRing_slot, joined),
    CSHMRING_SLOT_LAG_LIMIT_BYTES = offsetof(CShmRing_slot, lag_limit_bytes),
    CSHMRING_SLOT_LAG_LIMIT_NANOSECONDS = offsetof(CShmRing_slot, lag_limit_nanoseconds),
    CSHMRING_SLOT_SLEEPING = offsetof(CShmRing_slot, sleeping),
    CSHMRING_SLOT_SPACE_EPOCH = offsetof(CShmRing_slot, space_epoch),
    CSHMRING_SLOT_SLEEPS = offsetof(CShmRing_slot, sleeps),
    CSHMRING_SLOT_WOKEN = offsetof(CShmRing_slot, woken),
    CSHMRING_SLOT_ANNOUNCED = offsetof(CShmRing_slot, announced),
    CSHMRING_SLOT_COUNTED_WAITS = offsetof(CShmRing_slot, counted_waits),
    CSHMRING_SLOT_GENERATION = offsetof(CShmRing_slot, generation),
    CSHMRING_SLOT_NOTICE = offsetof(CShmRing_slot, notice),
};

_Static_assert(sizeof(CShmRing_config) == CSHMRING_GROUP, "config is one group");
_Static_assert(offsetof(CShmRing_config, capacity) == 24, "capacity");
_Static_assert(offsetof(CShmRing_config, salt) == 72, "salt");
_Static_assert(offsetof(CShmRing_config, flags) == 104, "flags");
_Static_assert(sizeof(CShmRing_producer) == CSHMRING_GROUP, "producer is one group");
_Static_assert(sizeof(CShmRing_counters) == CSHMRING_GROUP, "counters are one group");
_Static_assert(offsetof(CShmRing_header, producer) == 128, "producer line");
_Static_assert(offsetof(CShmRing_header, counters) == 256, "counters");
_Static_assert(offsetof(CShmRing_header, boundaries) == 384, "boundary index");
_Static_assert(offsetof(CShmRing_header, wake) == 896, "wake-up group");
_Static_assert(sizeof(CShmRing_wake) == CSHMRING_GROUP, "the wake-up group is one group");
_Static_assert(offsetof(CShmRing_wake, producer_waiting) == CSHMRING_LINE, "producer_waiting has its own line");
_Static_assert(sizeof(CShmRing_header) <= CSHMRING_DATA_OFFSET, "the header fits before the data");
_Static_assert(sizeof(CShmRing_doorbell) <= CSHMRING_DOORBELL_PAGE, "the doorbell fits its page");
_Static_assert(sizeof(CShmRing_record) == CSHMRING_RECORD_HEADER, "record header");
_Static_assert(offsetof(CShmRing_slot, sleeping) == 128, "sleeping line");
_Static_assert(offsetof(CShmRing_slot, generation) == 256, "owner line");
_Static_assert(sizeof(CShmRing_slot) == 3 * CSHMRING_GROUP, "slot");
_Static_assert(sizeof(CShmRing_slot) <= CSHMRING_SLOT_PAGE, "a slot fits its page");

#endif  // CSHMRINGLAYOUT_H
