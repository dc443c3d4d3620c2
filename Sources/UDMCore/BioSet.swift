import Synchronization

/// A fixed pool of clones (dm: `struct bio_set` with its mempool). Memory stays bounded under
/// any load: when the pool is empty a caller either fails (`.noWait`), blocks until a clone
/// comes back (`.wait`), or parks the original it maps (`allocate(for:)`): the original waits
/// on the pool, in order, and is submitted again by whichever thread releases a clone.
/// Parking holds the bio, never the thread, so a disk whose clones are all held (a suspended
/// lower disk under a stack) stalls only its own I/O. A parked original holds no clone, so it
/// can never be part of a wait cycle; threads waiting for clones are served first.
public final class BioSet: @unchecked Sendable {
    public enum Mode: Sendable {
        case noWait
        /// Start this thread's plugged bios first, then wait.
        case wait
        /// Wait with bios still on the plug. Can wait for clones only this thread would
        /// release: for the naive policy (tests only).
        case waitHoldingPlug
    }

    /// How a bio that needs several clones at once takes them.
    public enum ManyPolicy: Sendable {
        /// Try all without waiting; on failure give them back, take the device's allocation
        /// mutex and take all waiting. Only the mutex holder can hold a partial set, so two
        /// threads can never each hold part of what the other needs.
        case noWaitThenMutex
        /// No discipline: take them one by one, waiting on each, and wait with bios still on
        /// the plug. Deadlocks under exhaustion: tests only.
        case naive
    }

    public let capacity: Int
    public let perBioDataSize: Int
    private let lock = ConditionLock()
    private var freeHead: Bio?
    private var freeCount: Int
    private var parkedHead: Bio?
    private var parkedTail: Bio?
    /// Serialises the blocking pass of `allocateMany` (dm reuses md->table_devices_lock).
    private let allocationMutex: Mutex<Void>

    public init(capacity: Int, perBioDataSize: Int = 0) {
        precondition(capacity >= 1, "a bioset needs at least one clone")
        self.capacity = capacity
        self.perBioDataSize = perBioDataSize
        self.freeCount = capacity
        self.allocationMutex = Mutex(())
        for _ in 0..<capacity {
            let bio = Bio(pool: self, perBioDataSize: perBioDataSize)
            bio.next = freeHead
            freeHead = bio
        }
    }

    /// Clones currently free (a snapshot; for status and tests).
    public var available: Int { lock.withLock { freeCount } }

    public func allocate(_ mode: Mode) -> Bio? {
        lock.lock()
        defer { lock.unlock() }
        if mode != .noWait && freeHead == nil {
            if mode == .wait {
                // Clones held on this thread's plug may be the ones it would wait for.
                lock.unlock()
                BioList.unplugCurrent()
                lock.lock()
            }
            while freeHead == nil { lock.wait() }
        }
        guard let bio = freeHead else { return nil }
        freeHead = bio.next
        bio.next = nil
        freeCount -= 1
        return bio
    }

    /// A free clone for the next piece of `original`, unless originals parked before it are
    /// still waiting. Otherwise parks `original` (linked through `next`; a resumed one keeps
    /// its place at the front) and returns nil: the caller drops it until it is submitted again.
    public func allocate(for original: Bio) -> Bio? {
        lock.lock()
        defer { lock.unlock() }
        let resumed = original.resumedFromPark
        original.resumedFromPark = false
        if parkedHead == nil || resumed, let bio = freeHead {
            freeHead = bio.next
            bio.next = nil
            freeCount -= 1
            return bio
        }
        if resumed {
            original.next = parkedHead
            parkedHead = original
            if parkedTail == nil { parkedTail = original }
        } else {
            original.next = nil
            if let tail = parkedTail { tail.next = original } else { parkedHead = original }
            parkedTail = original
        }
        return nil
    }

    /// Takes `count` clones for one bio, chained through `next`, if all are free now; else nil
    /// (and it holds none).
    public func allocateManyNoWait(_ count: Int) -> Bio? {
        precondition(count >= 1 && count <= capacity, "asked for \(count) clones from a pool of \(capacity)")
        return take(count, mode: .noWait)
    }

    /// Takes `count` clones for one bio, chained through `next`.
    public func allocateMany(_ count: Int, policy: ManyPolicy = .noWaitThenMutex) -> Bio {
        precondition(count >= 1 && count <= capacity, "asked for \(count) clones from a pool of \(capacity)")
        if count == 1 { return allocate(.wait)! }
        switch policy {
        case .naive:
            return take(count, mode: .waitHoldingPlug)!
        case .noWaitThenMutex:
            if let chain = take(count, mode: .noWait) { return chain }
            // The mutex holder may be waiting for clones held on this thread's plug.
            BioList.unplugCurrent()
            return allocationMutex.withLock { _ in take(count, mode: .wait)! }
        }
    }

    /// Takes `count` clones one at a time; in `.noWait` mode gives back a partial set and fails.
    private func take(_ count: Int, mode: Mode) -> Bio? {
        var head: Bio?
        for _ in 0..<count {
            guard let bio = allocate(mode) else {
                while let b = head { head = b.next; release(b) }
                return nil
            }
            bio.next = head
            head = bio
        }
        return head
    }

    public func release(_ bio: Bio) {
        bio.next = nil
        bio.flags = []
        bio.buffer = nil
        lock.lock()
        bio.next = freeHead
        freeHead = bio
        freeCount += 1
        lock.signal()
        // The oldest parked original goes on, through this thread's BioList.
        let parked = parkedHead
        if let parked {
            parkedHead = parked.next
            if parkedHead == nil { parkedTail = nil }
            parked.next = nil
        }
        lock.unlock()
        if let parked {
            parked.resumedFromPark = true
            parked.submit()
        }
    }
}
