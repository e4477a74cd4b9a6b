import CShmAtomics
import CShmLinux
import Testing
import SystemPackage

@testable import ShmRing

#if canImport(Glibc)
import Glibc
#endif

@Suite(.enabled(if: IOURing.isAvailable, "io_uring is refused here (seccomp?)")) struct IOURingTests {
    @Test func futexWaitCompletesWhenTheWordIsWoken() throws {
        #expect(IOURing.supportsFutexWait, "kernel 6.7+ is required (this machine runs 6.18)")
        let ring = try IOURing()
        let segment = try Segment.create(name: "wake-word", size: 4)
        let word = segment.baseAddress!.assumingMemoryBound(to: UInt32.self)
        // A wait on a word that no longer holds the expected value completes at once.
        try ring.prepareFutexWait(word, expected: 1, userData: 1)
        try ring.submit()
        #expect(try ring.wait(timeout: .seconds(10)) == IOURing.Completion(userData: 1, result: -EAGAIN))

        // A pending wait completes when another thread changes the word and wakes it. Its
        // completion is the only thing that can end the wait before the 60 s bound.
        try ring.prepareFutexWait(word, expected: 0, userData: 2)
        try ring.submit()
        #expect(ring.peek() == nil)
        let address = UInt(bitPattern: word)
        _ = onAnotherThread {
            let word = UnsafeMutablePointer<UInt32>(bitPattern: address)!
            // Release store, paired with the kernel's check of the word under its futex lock.
            CShmAtomics_u32_store_release(word, 1)
            return (try? Futex.wake(word)) ?? -1
        }
        #expect(try ring.wait(timeout: .seconds(60)) == IOURing.Completion(userData: 2, result: 0))
    }

    @Test func pollSeesAHangUpAndTheTimeoutExpires() throws {
        let ring = try IOURing()
        let (left, right) = try makeSocketPair()
        defer { left.closeIgnoringErrors() }
        try ring.preparePoll(left, events: UInt32(POLLIN | Int32(CShmLinux_POLLRDHUP)), userData: 7)
        try ring.submit()
        right.closeIgnoringErrors()
        let completion = try #require(try ring.wait(timeout: .seconds(60)))
        #expect(completion.userData == 7)
        #expect(completion.result & Int32(CShmLinux_POLLRDHUP) != 0 || completion.result & Int32(POLLHUP) != 0)

        try ring.submitTimeout(after: .milliseconds(1), userData: 8)
        #expect(try ring.wait(timeout: .seconds(60)) == IOURing.Completion(userData: 8, result: -ETIME))
        #expect(try ring.wait(timeout: .milliseconds(1)) == nil, "nothing else was queued")
    }

    @Test func anEventFDRegisteredOnTheRingBecomesReadable() throws {
        let ring = try IOURing()
        let eventFD = FileDescriptor(rawValue: CShmLinux_eventfd(0, CShmLinux_EFD_CLOEXEC | CShmLinux_EFD_NONBLOCK))
        defer { eventFD.closeIgnoringErrors() }
        try ring.register(eventFD: eventFD)
        var counter: UInt64 = 0
        #expect(read(eventFD.rawValue, &counter, 8) == -1 && errno == EAGAIN)
        try ring.submitTimeout(after: .zero, userData: 1)
        _ = try ring.wait(timeout: .seconds(60))
        #expect(read(eventFD.rawValue, &counter, 8) == 8 && counter >= 1)
    }
}
