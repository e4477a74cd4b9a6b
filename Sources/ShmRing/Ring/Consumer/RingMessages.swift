import CShmAtomics
import CShmLinux
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// One message of a ring, copied out of it: what `RingConsumer.messages()` delivers.
public struct RingMessage: Sendable, Equatable {
    /// The payload (an owned copy: one allocation per message).
    public var bytes: [UInt8]
    /// Its sequence number, position, type tag and what was missed before it.
    public var info: RingRecordInfo
    /// The ring it came from: a new producer under the same key is a new `segmentID`, and its
    /// sequence numbers start again (see `RingConsumer.messages(idle:reattach:)`).
    public var segmentID: SegmentID

    public init(bytes: [UInt8], info: RingRecordInfo, segmentID: SegmentID) {
        self.bytes = bytes
        self.info = info
        self.segmentID = segmentID
    }
}

/// Whether `RingConsumer.messages(idle:reattach:)` follows the next producer of its key when the
/// producer goes, instead of ending.
public struct ReattachPolicy: Sendable, Equatable {
    /// How long to wait for the next producer each time one goes (nil: without end). When it
    /// passes, the iteration throws `.notFound`.
    public var timeout: Duration?

    /// Follow every next producer, waiting for each at most `timeout` (nil: without end).
    public static func follow(timeout: Duration? = nil) -> ReattachPolicy { ReattachPolicy(timeout: timeout) }
}

extension RingConsumer {
    /// The consumer's messages as an `AsyncSequence`:
    ///
    /// ```swift
    /// for try await message in consumer.messages() {
    ///     handle(message.bytes)
    /// }
    /// // here: the producer is gone and everything it committed was read, or the task was cancelled
    /// ```
    ///
    /// - Each element is an owned copy of the payload (one allocation per message). For zero-copy
    ///   reading, use `poll` in a loop of your own.
    /// - Messages that are there are polled on the iterating task. When there are none, the wait
    ///   runs on a thread of the iterator's own (started at the first wait, joined when the
    ///   iteration ends), never on the cooperative pool: it
    ///   spins, yields and then blocks in `wait(timeout:)` as `idle` says (by default the
    ///   calibrated spins, then blocking, looking again every second). A woken message reaches the
    ///   task after two wake-ups: the consumer's, then the task's.
    /// - Cancelling the iterating task ends the iteration at once: the waiting thread's sleep also
    ///   watches an eventfd that the cancellation makes readable (without io_uring, it looks every
    ///   20 ms).
    /// - The iteration ends (`nil`) when the producer is gone and everything it committed was
    ///   read, unless `reattach` says to follow the next producer. It throws what `poll` throws
    ///   (`.demoted` ends it too: iterate again to go on).
    /// - With `reattach: .follow(timeout:)`, when the producer is gone and everything it
    ///   committed was read, the iteration detaches this consumer and waits (suspended, looking
    ///   every 10 ms, up to every 160 ms while the old producer lingers; cancelling the task ends
    ///   it) for a producer of another ring under the same key, attaches with this consumer's
    ///   configuration from that ring's oldest message, and goes on. Each message carries its
    ///   ring's `segmentID`: a new one marks the new producer, whose sequence numbers start again;
    ///   two rings' messages never mix, and a producer that ended its stream and lingers is not
    ///   read twice. When `timeout` passes with no new producer, the iteration throws `.notFound`;
    ///   an attach error that waiting cannot cure (permission, layout, configuration) ends it
    ///   with that error. Each attempt's handshake is bounded by 1 s (it runs on the task).
    ///
    /// Iterate once, from one task at a time, and do not poll the consumer meanwhile: the sequence
    /// uses the consumer, which is not thread-safe.
    public func messages(idle: IdleStrategy = .block(), reattach: ReattachPolicy? = nil) -> RingMessages {
        RingMessages(consumer: self, idle: idle, reattach: reattach)
    }
}

/// The messages of a `RingConsumer` (see `RingConsumer.messages(idle:)`).
public struct RingMessages: AsyncSequence {
    public typealias Element = RingMessage
    public typealias Failure = RingError

    let consumer: RingConsumer
    let idle: IdleStrategy
    let reattach: ReattachPolicy?

    public func makeAsyncIterator() -> Iterator {
        Iterator(waiter: MessageWaiter(consumer: consumer, idle: idle), reattach: reattach)
    }

    public struct Iterator: AsyncIteratorProtocol {
        public typealias Element = RingMessage
        public typealias Failure = RingError

        var waiter: MessageWaiter
        let reattach: ReattachPolicy?
        var finished = false

        public mutating func next(isolation actor: isolated (any Actor)? = #isolation) async throws(RingError)
            -> RingMessage?
        {
            while !finished {
                if Task.isCancelled { break }
                var message: RingMessage?
                let consumer = waiter.consumer
                var gone = false
                do {
                    // The owned copy: one allocation, here.
                    try consumer.poll(limit: 1) { bytes, info in
                        message = RingMessage(
                            bytes: bytes.withUnsafeBytes { [UInt8]($0) }, info: info, segmentID: consumer.segmentID)
                        return .continue
                    }
                } catch {
                    if error.code != .producerGone {
                        finished = true
                        waiter.finish()
                        throw error
                    }
                    gone = true
                }
                if gone {
                    if try await followed(isolation: actor) { continue }
                    break
                }
                if let message { return message }
                let waited = await waiter.waitOffThePool()
                switch waited {
                case .ready, .timedOut: continue
                case .producerGone:
                    // Drained first: the next poll hands out what is left, and reports the
                    // producer gone once nothing is.
                    if try await followed(isolation: actor) { continue }
                    finished = true
                case .interrupted: finished = true
                case .failed(let error):
                    finished = true
                    waiter.finish()
                    throw error
                }
            }
            finished = true
            waiter.finish()
            return nil
        }

        public mutating func next() async throws(RingError) -> RingMessage? {
            try await next(isolation: nil)
        }

        /// The producer is gone. Without a policy: false (the iteration ends). With one, once
        /// nothing is left to read: detaches, waits for a producer of another ring under the same
        /// key and reads on from it (true); false when the task was cancelled meanwhile; throws
        /// `.notFound` when the policy's timeout passed, and what an attach threw when it cannot
        /// come right by waiting (a permission, layout or configuration error).
        mutating func followed(isolation actor: isolated (any Actor)?) async throws(RingError) -> Bool {
            let old = waiter.consumer
            guard let reattach else { return false }
            if old.hasMessage { return true }  // committed before it went: read it first
            waiter.finish()
            old.detach()
            var configuration = old.configuration
            configuration.start = .oldest
            // Each attempt's handshake runs on this task: keep it short.
            configuration.timeout = Swift.min(configuration.timeout, .seconds(1))
            let deadline = reattach.timeout.map { ContinuousClock.now + $0 }
            var pause = Duration.milliseconds(10)
            while !Task.isCancelled {
                let next: RingConsumer?
                do throws(RingError) {
                    next = try RingConsumer(key: old.key, namespace: old.namespace, configuration: configuration)
                } catch {
                    switch error.code {
                    case .permissionDenied, .incompatibleLayout, .keyError, .typeMismatch, .invalidConfiguration,
                        .gatingRefused:
                        finished = true
                        throw error
                    default:
                        next = nil  // nobody serves the key yet, no free slot, a producer that died mid-handshake
                    }
                }
                if let next {
                    if next.segmentID != old.segmentID {
                        waiter = MessageWaiter(consumer: next, idle: waiter.idle)
                        return true
                    }
                    next.detach()  // the old producer lingers: not read twice; look less often
                    pause = Swift.min(pause * 2, .milliseconds(160))
                }
                if let deadline, ContinuousClock.now >= deadline {
                    finished = true
                    throw RingError(
                        .notFound, key: old.key, "no new producer served \(old.key) within \(reattach.timeout!)")
                }
                try? await Task.sleep(for: pause)
            }
            return false
        }
    }
}

/// The iterator's waiting half: a thread of its own on which the consumer idles (spins, yields,
/// sleeps) while the iterating task is suspended, and the eventfd that its cancellation writes.
/// Owned by the iterator alone: when the iterator goes (the loop ended, or was left with `break`
/// or an error), `deinit` stops and joins the thread. The thread holds `WaitingThread`, never
/// this object.
///
/// `@unchecked Sendable`: only the iterating task uses it (`waitOffThePool`, `finish`); the
/// thread and the cancellation handler use `WaitingThread`.
final class MessageWaiter: @unchecked Sendable {
    /// What one wait off the pool ended with.
    enum Waited {
        case ready, timedOut, producerGone, interrupted
        case failed(RingError)
    }

    let consumer: RingConsumer
    let idle: IdleStrategy
    private let waiting: WaitingThread
    private var thread: pthread_t?
    private var finished = false

    init(consumer: RingConsumer, idle: IdleStrategy) {
        self.consumer = consumer
        self.idle = idle
        waiting = WaitingThread(consumer: consumer, idle: idle)
    }

    deinit { finish() }

    /// Idles as `idle` says on the waiting thread (started at the first call), until a message
    /// may be there, the producer goes, or the task is cancelled.
    func waitOffThePool() async -> Waited {
        if thread == nil {
            let waiting = waiting
            do throws(SystemCallError) {
                thread = try startThread { waiting.serve() }
            } catch {
                return .failed(RingError(error, key: consumer.key))
            }
        }
        let waiting = waiting
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Waited, Never>) in
                waiting.submit(continuation)
            }
        } onCancel: {
            waiting.cancel()
        }
    }

    /// The iteration is over: the waiting thread ends (it is idle: no wait is in flight when the
    /// task gets here), the consumer's sleeper forgets the cancellation eventfd, which closes.
    func finish() {
        guard !finished else { return }
        finished = true
        waiting.stop()
        if let thread { pthread_join(thread, nil) }
        thread = nil
        consumer.sleeper?.forgetInterrupt()
        waiting.closeCancellation()
    }
}

/// What the waiting thread and the cancellation handler share with the iterator.
///
/// `@unchecked Sendable`: `request` and `stopping` are guarded by `mutex`; the consumer is used
/// by the thread only between taking a request and resuming it, while the task is suspended (the
/// mutex and the continuation order the two); `cancelled` is an atomic word.
final class WaitingThread: @unchecked Sendable {
    private let consumer: RingConsumer
    private let idle: IdleStrategy
    /// Written once by a cancellation (an eventfd: its readability also ends an io_uring sleep).
    private let cancellation: FileDescriptor?
    /// 1 once cancelled (a word of its own: the thread reads it between spins).
    private let cancelled = UnsafeMutablePointer<UInt32>.allocate(capacity: 1)
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var request: CheckedContinuation<MessageWaiter.Waited, Never>?
    private var stopping = false
    private var closed = false

    init(consumer: RingConsumer, idle: IdleStrategy) {
        self.consumer = consumer
        self.idle = idle
        let raw = CShmLinux_eventfd(0, CShmLinux_EFD_CLOEXEC | CShmLinux_EFD_NONBLOCK)
        // Without an eventfd, a cancelled wait ends at its next look (below), not at once.
        cancellation = raw >= 0 ? FileDescriptor(rawValue: raw) : nil
        cancelled.initialize(to: 0)
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(condition, nil)
    }

    deinit {
        closeCancellation()
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        condition.deallocate()
        mutex.deallocate()
        cancelled.deallocate()
    }

    /// Hands one wait to the thread (from the task).
    func submit(_ continuation: CheckedContinuation<MessageWaiter.Waited, Never>) {
        pthread_mutex_lock(mutex)
        request = continuation
        pthread_cond_signal(condition)
        pthread_mutex_unlock(mutex)
    }

    /// Ends `serve` once it is idle (from the task).
    func stop() {
        pthread_mutex_lock(mutex)
        stopping = true
        pthread_cond_signal(condition)
        pthread_mutex_unlock(mutex)
    }

    /// The thread: takes one request at a time until `stop`.
    func serve() {
        // Plain: before the first request is taken (which orders it for the task) and after
        // the last one, before the thread ends (pthread_join orders it for the task).
        consumer.waitingThreads += 1
        defer { consumer.waitingThreads -= 1 }
        pthread_mutex_lock(mutex)
        while true {
            while request == nil && !stopping { pthread_cond_wait(condition, mutex) }
            guard let continuation = request else { break }
            request = nil
            pthread_mutex_unlock(mutex)
            continuation.resume(returning: idleOnce())
            pthread_mutex_lock(mutex)
        }
        pthread_mutex_unlock(mutex)
    }

    /// Runs on the thread.
    private func idleOnce() -> MessageWaiter.Waited {
        var rounds = 0
        // Relaxed: the flag only needs to be seen eventually (the eventfd, below, ends a sleep).
        while CShmAtomics_u32_load_relaxed(cancelled) == 0 {
            if consumer.hasMessage { return .ready }
            guard let timeout = idle.blockTimeout(after: rounds) else {
                idle.idle(&rounds)
                continue
            }
            // Without the eventfd, look at the cancellation every 20 ms.
            let slice = cancellation == nil ? min(timeout, .milliseconds(20)) : timeout
            do throws(RingError) {
                switch try consumer.wait(timeout: slice, interrupt: cancellation) {
                case .ready: return .ready
                case .timedOut: return cancellation == nil ? .ready : .timedOut
                case .producerGone: return .producerGone
                case .interrupted: return .interrupted
                }
            } catch {
                return .failed(error)
            }
        }
        return .interrupted
    }

    /// Called by the task's cancellation, on any thread.
    func cancel() {
        // Relaxed: the eventfd write (a system call) makes a sleeping wait see it at once; a
        // spinning one sees the flag at its next look.
        CShmAtomics_u32_store_relaxed(cancelled, 1)
        pthread_mutex_lock(mutex)  // not while `closeCancellation` closes it
        if let cancellation, !closed {
            var one: UInt64 = 1
            _ = write(cancellation.rawValue, &one, 8)
        }
        pthread_mutex_unlock(mutex)
    }

    /// Closes the cancellation eventfd (once the consumer's sleeper has forgotten it).
    func closeCancellation() {
        pthread_mutex_lock(mutex)
        if !closed { cancellation?.closeIgnoringErrors() }
        closed = true
        pthread_mutex_unlock(mutex)
    }
}
