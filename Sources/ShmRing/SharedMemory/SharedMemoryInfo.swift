/// What `SharedMemory.info(key:)` reports about a live segment.
public struct SharedMemoryInfo: Sendable, Equatable {
    public var key: String
    public var segmentID: SegmentID
    public var size: Int
    public var creatorPID: Int32
    public var creatorUID: UInt32
    public var creatorOnlyWriters: Bool
}
