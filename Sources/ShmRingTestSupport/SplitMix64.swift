/// A small seeded generator (SplitMix64), so that a failing random test or a fuzz run can be
/// replayed from its seed (tests and the test peer).
package struct SplitMix64: RandomNumberGenerator {
    package let seed: UInt64
    private var state: UInt64
    package init(seed: UInt64) {
        self.seed = seed
        state = seed
    }
    package mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
}
