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

    /// Copies at most in progress for an origin's snapshots before further origin writes (and
    /// snapshot writes that need a copy) are held back (dm-snap's cow_threshold).
    static let maxCopiesInProgress = 2048

    // Guarded by lock.
    private var copiesInProgress = 0
    /// Writes held back while too many copies are in progress; a snapshot write with its snapshot.
    private var throttled: [(bio: Bio, snapshot: SnapshotTarget?)] = []

    /// An origin write may proceed only once every valid snapshot holds its own copy of the
    /// chunk. Starts the copies that are missing; if any copy is outstanding, queues `bio` on
    /// one of them (it comes back here when that copy is committed) and returns false. While
    /// too many copies are in progress, a new write (`throttle`) is held until some end.
    func writeMayProceed(_ bio: Bio, throttle: Bool = true) -> Bool {
        var started: PendingException?
        let proceed: Bool = lock.withLock {
            if throttle && holdIfBusy(bio, snapshot: nil) { return false }
            let waitOn = chunkNeeds(at: bio.sector, started: &started)
            waitOn?.originBios.append(bio)
            return waitOn == nil
        }
        startCopies(started)
        return proceed
    }

    /// Whether every valid snapshot holds its own copy of the chunk at `sector` (starting the
    /// copies that are missing). If not, `copied` is signalled once one outstanding copy is
    /// committed; then ask again.
    func chunkCopied(at sector: UInt64, signal copied: Completion) -> Bool {
        var started: PendingException?
        let waitOn: PendingException? = lock.withLock {
            let waitOn = chunkNeeds(at: sector, started: &started)
            waitOn?.completions.append(copied)
            return waitOn
        }
        startCopies(started)
        return waitOn == nil
    }

    /// With lock held: an outstanding copy of the chunk at `sector` (nil if every snapshot has
    /// one); the copies it starts are chained onto `started`.
    private func chunkNeeds(at sector: UInt64, started: inout PendingException?) -> PendingException? {
        var waitOn: PendingException?
        forEachSnapshot { snapshot in
            switch snapshot.exceptionForOriginWrite(at: sector) {
            case .none: break
            case .pending(let pending): waitOn = pending
            case .started(let pending):
                copiesInProgress += 1
                waitOn = pending
                pending.nextStarted = started
                started = pending
            }
        }
        return waitOn
    }

    private func startCopies(_ chain: PendingException?) {
        var cursor = chain
        while let exception = cursor {
            cursor = exception.nextStarted
            exception.nextStarted = nil
            exception.snapshot.startCopy(exception)
        }
    }

    /// With lock held: holds `bio` (an origin write, or a write of `snapshot` that needs a
    /// copy) if too many copies are in progress, and says so. A snapshot write that needs a
    /// copy counts one when it starts it.
    func holdIfBusy(_ bio: Bio, snapshot: SnapshotTarget?) -> Bool {
        guard copiesInProgress >= Self.maxCopiesInProgress else { return false }
        throttled.append((bio, snapshot))
        return true
    }

    /// With lock held: a snapshot write started a copy.
    func copyStarted() {
        copiesInProgress += 1
    }

    /// A copy ended (committed or failed): writes held back go again once below the limit.
    func copyEnded() {
        let held: [(bio: Bio, snapshot: SnapshotTarget?)] = lock.withLock {
            copiesInProgress -= 1
            guard copiesInProgress < Self.maxCopiesInProgress, !throttled.isEmpty else { return [] }
            defer { throttled = [] }
            return throttled
        }
        for (bio, snapshot) in held {
            if let snapshot {
                snapshot.remap(bio)
            } else if writeMayProceed(bio) {
                bio.submit(to: device)
            }
        }
    }

    /// Sends an origin write that waited for a copy through the check again, then on to the
    /// origin device if nothing else is outstanding.
    func retry(_ bio: Bio) {
        if writeMayProceed(bio, throttle: false) { bio.submit(to: device) }
    }
}

/// A chunk being copied to one snapshot's COW (dm: `struct dm_snap_pending_exception`), with
/// the writes waiting for it. Each snapshot keeps the ones it is done with for reuse, arrays
/// and all, so an exception allocates nothing once the pool is warm.
final class PendingException: CopyRequest, @unchecked Sendable {
    var old: UInt64 = 0
    var new: UInt64 = 0
    unowned let snapshot: SnapshotTarget
    /// Origin writes to retry once this copy is committed.
    var originBios: [Bio] = []
    /// Merge steps waiting for this copy.
    var completions: [Completion] = []
    var snapshotBios: [Bio] = []
    /// A snapshot write of the whole chunk that is the exception's data (no copy); it ends
    /// when the exception is committed.
    var fullChunkWrite: Bio?
    /// Links the copies one origin write started, to start them once the lock is let go.
    var nextStarted: PendingException?

    /// The snapshot, held while the copy is in the engine: a snapshot whose table goes away
    /// lives until its copies have ended (dm's destructor waits for its pending exceptions).
    var inFlight: SnapshotTarget?

    init(snapshot: SnapshotTarget) {
        self.snapshot = snapshot
    }

    override func copyEnded(_ status: BioStatus) {
        let owner = inFlight!
        inFlight = nil
        owner.copied(self, status: status)
    }
}
