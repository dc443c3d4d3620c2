import Glibc

/// Starts a detached thread running `body`: for the few long-lived workers (copy engine,
/// merges) that must not be libfuse's threads or a caller's.
public func startThread(_ body: @escaping @Sendable () -> Void) {
    final class Box: @unchecked Sendable {
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }
    var thread = pthread_t()
    let context = Unmanaged.passRetained(Box(body)).toOpaque()
    pthread_create(&thread, nil, { context in
        Unmanaged<Box>.fromOpaque(context!).takeRetainedValue().body()
        return nil
    }, context)
    pthread_detach(thread)
}

/// A one-shot signal: `wait` blocks until `signal` (from any thread).
public final class Completion: @unchecked Sendable {
    private let lock = ConditionLock()
    private var done = false

    public init() {}

    public func signal() {
        lock.withLock {
            done = true
            lock.broadcast()
        }
    }

    public func wait() {
        lock.waitUntil({ done }, then: {})
    }
}
