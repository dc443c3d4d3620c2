import Glibc

/// A mutex with a condition variable, for the few places that must block until something
/// changes (a bioset refilling, in-flight I/O draining). Synchronization's `Mutex` has no
/// condition variable, so this wraps pthreads directly.
public final class ConditionLock: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let condition: UnsafeMutablePointer<pthread_cond_t>

    public init() {
        mutex = .allocate(capacity: 1)
        condition = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(condition, nil)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
        condition.deallocate()
    }

    public func lock() { pthread_mutex_lock(mutex) }
    public func unlock() { pthread_mutex_unlock(mutex) }

    /// Waits for a signal; call with the lock held, in a loop that rechecks the predicate.
    public func wait() { pthread_cond_wait(condition, mutex) }
    public func signal() { pthread_cond_signal(condition) }
    public func broadcast() { pthread_cond_broadcast(condition) }

    @inline(__always)
    public func withLock<T>(_ body: () throws -> T) rethrows -> T {
        lock()
        defer { unlock() }
        return try body()
    }

    /// Blocks until `predicate` holds (checked with the lock held), then runs `body` under the lock.
    public func waitUntil<T>(_ predicate: () -> Bool, then body: () throws -> T) rethrows -> T {
        lock()
        defer { unlock() }
        while !predicate() { wait() }
        return try body()
    }
}
