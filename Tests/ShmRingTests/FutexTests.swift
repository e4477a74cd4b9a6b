import CShmAtomics
import Testing

#if canImport(Glibc)
import Glibc
#endif

@testable import ShmRing

@Suite struct FutexTests {
    @Test func waitReturnsAtOnceWhenTheWordDiffers() throws {
        let segment = try Segment.create(name: "futex", size: 4)
        let word = segment.baseAddress!.assumingMemoryBound(to: UInt32.self)
        word.pointee = 7
        #expect(try Futex.wait(on: word, expected: 8, timeout: .seconds(60)) == .valueChanged)
    }

    @Test func waitEndsAtItsTimeoutWhenNobodyWakes() throws {
        let segment = try Segment.create(name: "futex", size: 4)
        let word = segment.baseAddress!.assumingMemoryBound(to: UInt32.self)
        #expect(try Futex.wait(on: word, expected: 0, timeout: .milliseconds(1)) == .timedOut)
        #expect(try Futex.wake(word) == 0, "nobody waits")
    }

    @Test func aWakeEndsAWaitInAnotherThread() throws {
        let segment = try Segment.create(name: "futex", size: 4)
        let address = UInt(bitPattern: segment.baseAddress!)
        // The waiter re-checks the word after every return (spurious wake-ups), as callers must.
        let waiter = try startThread {
            let word = UnsafeMutablePointer<UInt32>(bitPattern: address)!
            // Acquire: pairs with the release store below.
            while CShmAtomics_u32_load_acquire(word) == 0 {
                _ = try? Futex.wait(on: word, expected: 0, timeout: .seconds(60))
            }
        }
        let word = segment.baseAddress!.assumingMemoryBound(to: UInt32.self)
        CShmAtomics_u32_store_release(word, 1)
        try Futex.wake(word)
        pthread_join(waiter, nil)
        #expect(CShmAtomics_u32_load_acquire(word) == 1)
    }
}
