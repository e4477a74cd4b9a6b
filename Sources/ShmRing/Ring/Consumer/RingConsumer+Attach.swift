#if canImport(Glibc)
import Glibc
#endif

/// Attaching while the producer is not there yet, and following a new producer under the same
/// key (docs/failure-model.md, "A new producer").
extension RingConsumer {
    /// Attaches to the ring served under `key` as `init(key:namespace:configuration:)` does, but
    /// waits while nobody serves the key (looking every 10 ms), at most `timeout` (nil: until a
    /// producer comes).
    ///
    /// - Throws: what `init` throws; `.notFound` when `timeout` passes with nobody serving `key`.
    public static func attach(
        waitingFor key: String, namespace: KeyNamespace = .abstract,
        configuration: ConsumerConfiguration = ConsumerConfiguration(), timeout: Duration? = nil
    ) throws(RingError) -> RingConsumer {
        let deadline = timeout.map { ContinuousClock.now + $0 }
        while true {
            do {
                return try RingConsumer(key: key, namespace: namespace, configuration: configuration)
            } catch  where error.code == .notFound {
                if let deadline, ContinuousClock.now >= deadline {
                    throw RingError(
                        .notFound, key: key, "nobody served \(key) within \(timeout!)")
                }
                usleep(10_000)
            }
        }
    }

    /// After the producer went (`.producerGone`): detaches this consumer and attaches to the next
    /// producer of the same key, waiting for it as `attach(waitingFor:)` does, with this
    /// consumer's configuration but from the oldest message the new ring still holds (a new
    /// producer's first messages are not missed).
    ///
    /// The new consumer reads the new ring only, so messages of two producers never mix; its
    /// `segmentID` differs from this one's (a new ring, a new epoch), and its sequence numbers
    /// start again. If the old producer is in fact still there (it ended its stream and
    /// lingers), this attaches to it again — the same `segmentID`, from the oldest message it still
    /// holds, so messages already read come again: compare `segmentID` with the old one's.
    ///
    /// - Throws: what `attach(waitingFor:)` throws.
    public func reattached(timeout: Duration? = nil) throws(RingError) -> RingConsumer {
        detach()
        var configuration = self.configuration
        configuration.start = .oldest
        return try Self.attach(waitingFor: key, namespace: namespace, configuration: configuration, timeout: timeout)
    }
}
