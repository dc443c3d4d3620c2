import UDMCore

/// Where a snapshot keeps its exceptions: which origin chunks have been copied, and to which
/// chunk of the COW device (dm: `struct dm_exception_store`).
///
/// A store is driven by one snapshot: `read` once at activation, then `prepare` a COW chunk
/// for each new exception, copy the data there, and `commit` the record. `commit`'s callback
/// runs once the record is durable; several commits may share one metadata write.
public protocol ExceptionStore: AnyObject, Sendable {
    /// Chunk size in sectors.
    var chunkSize: UInt64 { get }
    /// Reads what is on the COW device, calling `found(old, new)` for every exception in commit
    /// order; returns false if the store is marked invalid. Throws for a COW device that does
    /// not hold a usable store (and leaves it untouched).
    func read(_ found: (_ old: UInt64, _ new: UInt64) -> Void) throws(StoreError) -> Bool
    /// A free COW chunk for a new exception, or nil when the COW device is full.
    func prepare() -> UInt64?
    /// Records old → new. `done(true)` once durable, `done(false)` if the store failed.
    func commit(old: UInt64, new: UInt64, done: @escaping @Sendable (Bool) -> Void)
    /// A prepared chunk whose copy failed: it will never be committed.
    func abandon(_ new: UInt64)
    /// Marks the store invalid where it lives (a full or failed snapshot).
    func invalidate()
    /// For the status line: sectors allocated, total sectors, metadata sectors.
    var usage: (allocated: UInt64, total: UInt64, metadata: UInt64) { get }
}

/// A store that can be merged back into its origin (dm: prepare_merge / commit_merge).
public protocol MergeableStore: ExceptionStore {
    /// Up to `limit` of the last committed exceptions (all in one metadata area), newest
    /// first; empty when none are left.
    func lastExceptions(limit: Int) -> [(old: UInt64, new: UInt64)]
    /// Forgets the last `count` exceptions on disk (durably: flush + FUA), stepping back to the
    /// previous metadata area when the current one empties. Call only after the merged data is
    /// durable on the origin.
    func commitMerge(_ count: Int) throws(StoreError)
}

/// A COW device that cannot be used as a store, with the reason.
public struct StoreError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Synchronous I/O on a device, for store metadata (done on copy-engine threads, never on the
/// thread that maps I/O).
enum StoreIO {
    static func run(_ op: BioOp, _ device: BlockDevice, sector: UInt64, sectors: UInt64,
                    buffer: UnsafeMutableRawPointer? = nil, flags: BioFlags = []) -> BioStatus {
        BioWaiter().run(Bio(op: op, sector: sector, sectors: sectors, buffer: buffer, flags: flags), on: device)
    }
}
