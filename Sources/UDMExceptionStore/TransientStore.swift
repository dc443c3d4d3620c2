import UDMCore

/// The transient store (`N`): exceptions live only in memory and COW chunks are handed out
/// from sector 0 up; nothing survives a restart (dm-snap-transient.c).
public final class TransientStore: ExceptionStore, @unchecked Sendable {
    private let cow: BlockDevice
    public let chunkSize: UInt64
    private let lock = ConditionLock()
    private var nextFree: UInt64 = 0

    public init(cow: BlockDevice, chunkSize: UInt64) {
        self.cow = cow
        self.chunkSize = chunkSize == 0 ? PersistentStore.defaultChunkSize : chunkSize
    }

    public func read(_ found: (UInt64, UInt64) -> Void) throws(StoreError) -> Bool { true }

    public func prepare() -> UInt64? {
        lock.withLock {
            guard (nextFree + 1) * chunkSize <= cow.sectors else { return nil }
            defer { nextFree += 1 }
            return nextFree
        }
    }

    public func commit(old: UInt64, new: UInt64, done: @escaping @Sendable (Bool) -> Void) { done(true) }
    public func abandon(_ new: UInt64) {}
    public func invalidate() {}

    public var usage: (allocated: UInt64, total: UInt64, metadata: UInt64) {
        lock.withLock { (nextFree * chunkSize, cow.sectors, 0) }
    }
}
