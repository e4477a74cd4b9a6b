#if canImport(Glibc)
import Glibc
#endif

/// Starts a joinable POSIX thread running `body`.
///
/// ShmRing does not use Foundation or Dispatch; its few threads (the rendezvous server, an
/// `AsyncSequence`'s waiting thread) are plain pthreads with a known lifetime: started by their
/// owner and joined by it.
package func startThread(_ body: @escaping @Sendable () -> Void) throws(SystemCallError) -> pthread_t {
    let box = Unmanaged.passRetained(ThreadBody(body)).toOpaque()
    var thread = pthread_t()
    let rc = pthread_create(
        &thread, nil,
        { argument in
            let body = Unmanaged<ThreadBody>.fromOpaque(argument!).takeRetainedValue()
            body.run()
            return nil
        }, box)
    guard rc == 0 else {
        Unmanaged<ThreadBody>.fromOpaque(box).release()
        throw SystemCallError("pthread_create", .init(rawValue: rc))
    }
    return thread
}

private final class ThreadBody: Sendable {
    let run: @Sendable () -> Void
    init(_ run: @escaping @Sendable () -> Void) { self.run = run }
}
