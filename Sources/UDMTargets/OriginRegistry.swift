import Synchronization
import UDMCore

/// The snapshots of each origin device, shared by the snapshot-origin and snapshot targets
/// (dm-snap.c's `_origins` hash). Kept in `TargetServices`, so one per daemon.
final class OriginRegistry: Sendable {
    /// Weak: the targets over an origin hold its `Origin` (and so its device); once the last
    /// of them goes, so do they.
    private let origins = Mutex<[ObjectIdentifier: WeakOrigin]>([:])

    private struct WeakOrigin {
        weak var origin: Origin?
    }

    static func of(_ services: TargetServices) -> OriginRegistry {
        services.shared(OriginRegistry.self) { OriginRegistry() }
    }

    /// The origin state for `device` (the origin's real device, which both targets name).
    func origin(for device: BlockDevice) -> Origin {
        origins.withLock { origins in
            if let origin = origins[ObjectIdentifier(device)]?.origin { return origin }
            // Entries of origins that went away; one of them may have had this key, as a
            // device's identifier is its address.
            origins = origins.filter { $0.value.origin != nil }
            let origin = Origin(device: device)
            origins[ObjectIdentifier(device)] = WeakOrigin(origin: origin)
            return origin
        }
    }
}

/// One origin device and its active snapshots. `lock` guards the exception state of every
/// snapshot of the origin, so an origin write sees all of them at one instant; its condition
/// is signalled when a tracked snapshot read of the origin ends.
final class Origin: @unchecked Sendable {
    let device: BlockDevice
    let lock = ConditionLock()
    private var registered: [Weak] = []
    private let smallest = Atomic<UInt64>(0)
    private let stale = Atomic<Bool>(false)

    private struct Weak {
        weak var snapshot: SnapshotTarget?
    }

    init(device: BlockDevice) {
        self.device = device
    }

    /// With `lock` held: calls `body` for each snapshot still alive. A snapshot that goes away
    /// must not take `lock` in its deinit, which can run right here, under the lock, when
    /// another thread lets go of it while this loads it.
    func forEachSnapshot(_ body: (SnapshotTarget) -> Void) {
        for entry in registered {
            if let snapshot = entry.snapshot { body(snapshot) }
        }
    }

    /// With `lock` held: whether any live snapshot satisfies `predicate`.
    func containsSnapshot(where predicate: (SnapshotTarget) -> Bool) -> Bool {
        registered.contains { $0.snapshot.map(predicate) ?? false }
    }

    /// An active snapshot; origin writes now also copy out for it.
    func register(_ snapshot: SnapshotTarget) {
        lock.withLock {
            if !containsSnapshot(where: { $0 === snapshot }) {
                registered.append(Weak(snapshot: snapshot))
            }
            snapshotsChanged()
        }
    }

    /// A snapshot went away. Called from its deinit, which may run under `lock` or the copy
    /// engine's lock, so it only marks the smallest chunk for recomputing.
    func snapshotWentAway() {
        stale.store(true, ordering: .releasing)
    }

    /// With `lock` held: drops the snapshots that went away and recomputes the smallest chunk.
    private func snapshotsChanged() {
        registered.removeAll { $0.snapshot == nil }
        var chunk: UInt64 = 0
        forEachSnapshot { snapshot in
            if snapshot.isActive && (chunk == 0 || snapshot.chunkSize < chunk) { chunk = snapshot.chunkSize }
        }
        smallest.store(chunk, ordering: .releasing)
    }

    /// The smallest chunk among the active snapshots (0 if none): origin writes are cut there
    /// (dm: get_origin_minimum_chunksize). Kept up to date as snapshots come and go, so a
    /// write reads one word.
    /// Call without `lock` held.
    var smallestChunk: UInt64 {
        if stale.exchange(false, ordering: .acquiringAndReleasing) {
            lock.withLock { snapshotsChanged() }
        }
        return smallest.load(ordering: .acquiring)
    }

    /// An origin write may proceed only once every valid snapshot holds its own copy of the
    /// chunk. Starts the copies that are missing; if any copy is outstanding, queues `bio` on
    /// one of them (it comes back here when that copy is committed) and returns false.
    func writeMayProceed(_ bio: Bio) -> Bool {
        chunkCopied(at: bio.sector) { [self] in retry(bio) }
    }

    /// Whether every valid snapshot holds its own copy of the chunk at `sector` (starting the
    /// copies that are missing). If not, `then` runs once one outstanding copy is committed;
    /// it should ask again.
    func chunkCopied(at sector: UInt64, then: @escaping @Sendable () -> Void) -> Bool {
        var started: [PendingException] = []
        var waitOn: PendingException?
        lock.withLock {
            forEachSnapshot { snapshot in
                switch snapshot.exceptionForOriginWrite(at: sector) {
                case .none: break
                case .pending(let pending): waitOn = pending
                case .started(let pending):
                    waitOn = pending
                    started.append(pending)
                }
            }
            waitOn?.waiters.append(then)
        }
        started.forEach { $0.snapshot.startCopy($0) }
        return waitOn == nil
    }

    /// Sends an origin write that waited for a copy through the check again, then on to the
    /// origin device if nothing else is outstanding.
    func retry(_ bio: Bio) {
        if writeMayProceed(bio) { bio.submit(to: device) }
    }
}

/// A chunk being copied to one snapshot's COW (dm: `struct dm_snap_pending_exception`), with
/// the writes waiting for it.
final class PendingException: @unchecked Sendable {
    let old: UInt64
    let new: UInt64
    unowned let snapshot: SnapshotTarget
    /// Origin-side work waiting for this copy (an origin write to retry, a merge step).
    var waiters: [@Sendable () -> Void] = []
    var snapshotBios: [Bio] = []
    /// A snapshot write of the whole chunk that is the exception's data (no copy); it ends
    /// when the exception is committed.
    var fullChunkWrite: Bio?

    init(old: UInt64, new: UInt64, snapshot: SnapshotTarget) {
        self.old = old
        self.new = new
        self.snapshot = snapshot
    }
}
