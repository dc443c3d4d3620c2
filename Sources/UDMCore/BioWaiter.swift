/// Submits a bio and blocks the calling thread until it ends: for callers that are synchronous
/// by nature (a FUSE worker, the control plane, tests). Reusable, one bio at a time.
public final class BioWaiter: BioCompletion, @unchecked Sendable {
    private let lock = ConditionLock()
    private var done = false

    public init() {}

    public func bioCompleted(_ bio: Bio) {
        lock.withLock {
            done = true
            lock.signal()
        }
    }

    /// Submits `bio` to `device` and returns its status once it has ended.
    @discardableResult
    public func run(_ bio: Bio, on device: BlockDevice) -> BioStatus {
        done = false
        bio.completion = self
        // Not through this thread's transfer engine: its completions need this thread.
        AsyncTransfer.with(nil) { bio.submit(to: device) }
        lock.waitUntil({ done }, then: {})
        return bio.status
    }
}
