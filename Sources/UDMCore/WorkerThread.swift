/// One thread that runs `work` each time it is kicked (kicks that arrive while it runs fold
/// into one more run): a target's own context for I/O it submits later, like dm's per-target
/// workqueues, so one target's burst never runs on a thread that others depend on. The
/// thread starts with the first kick and ends after `stop`.
public final class WorkerThread: @unchecked Sendable {
    private let lock = ConditionLock()
    private let work: @Sendable () -> Void
    private var kicked = false
    private var started = false
    private var stopped = false

    /// `work` should not keep the owner alive (capture it weakly): the owner's deinit stops this.
    public init(_ work: @escaping @Sendable () -> Void) {
        self.work = work
    }

    public func kick() {
        lock.withLock {
            kicked = true
            if !started {
                started = true
                startThread { [self] in run() }
            }
            lock.signal()
        }
    }

    public func stop() {
        lock.withLock {
            stopped = true
            lock.signal()
        }
    }

    private func run() {
        while true {
            let go: Bool = lock.withLock {
                while !kicked && !stopped { lock.wait() }
                kicked = false
                return !stopped
            }
            guard go else { return }
            work()
        }
    }
}
