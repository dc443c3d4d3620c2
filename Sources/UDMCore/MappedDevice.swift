import Synchronization

/// A device-mapper device (dm: `struct mapped_device`): a live table that I/O reads without a
/// lock, an inactive table waiting for resume, and the suspend gate. The split/clone/map
/// pipeline is in `MappedDevice+Split.swift`.
///
/// The live table is swapped only while the device is suspended with nothing in flight. A
/// bio first counts itself in flight, then checks the suspended flag; suspend sets the flag,
/// then waits for the count to reach zero. So once suspend returns, no thread is reading the
/// old table, and resume can replace and release it without a lock on the I/O path.
public final class MappedDevice: BlockDevice, @unchecked Sendable {
    public let name: String
    private let liveTable = Atomic<UnsafeMutableRawPointer?>(nil)
    private let size = Atomic<UInt64>(0)
    let inFlight = Atomic<Int>(0)
    private let suspendedFlag = Atomic<Bool>(true)
    /// Counted on completion of each original (MappedDevice+Stats.swift).
    let stats = DeviceStats()
    /// Guards the inactive table, the deferred list and the wait for in-flight I/O.
    let state = ConditionLock()
    private var inactive: Table?
    private var deferredHead: Bio?
    private var deferredTail: Bio?
    /// How bios needing several clones take them; `.naive` only from tests.
    public let manyPolicy: BioSet.ManyPolicy
    /// Originals waiting for a set of duplicate clones the pool could not give at once, and
    /// the device's own thread that takes each set with the pool's blocking discipline (the
    /// allocation mutex) and sends the original on: the wait holds this thread, never the
    /// thread that submitted the bio (a FUSE worker, another disk's completion).
    let waitingSets = ConditionLock()
    var waitingSetsHead: Bio?
    var waitingSetsTail: Bio?
    var setAllocator: WorkerThread!

    /// A new device has no table and is suspended: I/O waits until the first resume.
    public init(name: String, manyPolicy: BioSet.ManyPolicy = .noWaitThenMutex) {
        self.name = name
        self.manyPolicy = manyPolicy
        setAllocator = WorkerThread { [weak self] in self?.allocateWaitingSets() }
    }

    deinit {
        setAllocator.stop()
        if let pointer = liveTable.load(ordering: .acquiring) {
            Unmanaged<Table>.fromOpaque(pointer).release()
        }
    }

    public var sectors: UInt64 { size.load(ordering: .relaxed) }
    public var isSuspended: Bool { suspendedFlag.load(ordering: .sequentiallyConsistent) }

    public var discardZeroes: Bool {
        guard let table = live else { return false }
        return table.discardZeroes(sector: 0, count: table.sectors)
    }

    /// The live table, for the control plane (not the I/O path).
    public var live: Table? {
        state.withLock {
            liveTable.load(ordering: .acquiring).map { Unmanaged<Table>.fromOpaque($0).takeUnretainedValue() }
        }
    }

    public var loaded: Table? { state.withLock { inactive } }

    /// The I/O path's view of the live table: valid while the calling bio is in flight.
    @inline(__always)
    var admittedTable: Table {
        Unmanaged<Table>.fromOpaque(liveTable.load(ordering: .acquiring)!).takeUnretainedValue()
    }

    /// Puts `table` in the inactive slot (dm: load/reload); it goes live on `resume`.
    public func load(_ table: Table) {
        state.withLock { inactive = table }
    }

    /// Drops the inactive table (dm: clear).
    public func clear() {
        state.withLock { inactive = nil }
    }

    /// Holds new I/O and waits for I/O in flight to finish (dm: suspend, flushing).
    public func suspend() {
        guard !isSuspended else {
            // Another suspend may still be waiting: return only once the I/O has drained.
            state.waitUntil({ inFlight.load(ordering: .sequentiallyConsistent) == 0 }, then: {})
            return
        }
        let table = live
        table?.entries.forEach { $0.target.presuspend() }
        suspendedFlag.store(true, ordering: .sequentiallyConsistent)
        state.waitUntil({ inFlight.load(ordering: .sequentiallyConsistent) == 0 }, then: {})
        table?.entries.forEach { $0.target.postsuspend() }
    }

    /// Swaps in the inactive table if there is one, then lets held I/O through. Fails only when
    /// the device has never had a table.
    public func resume() throws(TableError) {
        var old: UnsafeMutableRawPointer?
        let held: Bio?
        state.lock()
        if let table = inactive {
            old = liveTable.exchange(Unmanaged.passRetained(table).toOpaque(), ordering: .acquiringAndReleasing)
            size.store(table.sectors, ordering: .relaxed)
            inactive = nil
        }
        guard let pointer = liveTable.load(ordering: .acquiring) else {
            state.unlock()
            throw TableError(line: nil, field: nil, "device \(name) has no table to resume")
        }
        Unmanaged<Table>.fromOpaque(pointer).takeUnretainedValue().entries.forEach { $0.target.resume() }
        suspendedFlag.store(false, ordering: .sequentiallyConsistent)
        held = deferredHead
        deferredHead = nil
        deferredTail = nil
        state.unlock()
        if let old {
            Unmanaged<Table>.fromOpaque(old).takeUnretainedValue().entries.forEach { $0.target.destroy() }
            Unmanaged<Table>.fromOpaque(old).release()
        }
        var bio = held
        while let b = bio {
            bio = b.next
            b.next = nil
            b.submit(to: self)
        }
    }

    /// The device is removed (dm: dm_destroy): waits for I/O in flight, then tears down the
    /// targets of its tables. It stays suspended; bios that still arrive are held.
    public func destroy() {
        suspend()
        let tables = [live, loaded].compactMap { $0 }
        tables.forEach { $0.entries.forEach { $0.target.destroy() } }
    }

    /// Fails every held bio with EIO (the device is going away); leaves it suspended.
    public func failHeldIO() {
        let held: Bio? = state.withLock {
            let head = deferredHead
            deferredHead = nil
            deferredTail = nil
            return head
        }
        var bio = held
        while let b = bio {
            bio = b.next
            b.next = nil
            b.end(.ioError)
        }
    }

    /// Counts a new original bio in flight, or holds it while the device is suspended.
    @inline(__always)
    func admit(_ bio: Bio) -> Bool {
        while true {
            inFlight.add(1, ordering: .sequentiallyConsistent)
            if !suspendedFlag.load(ordering: .sequentiallyConsistent) { return true }
            leaveInFlight()
            state.lock()
            if suspendedFlag.load(ordering: .sequentiallyConsistent) {
                bio.next = nil
                if let tail = deferredTail { tail.next = bio } else { deferredHead = bio }
                deferredTail = bio
                state.unlock()
                return false
            }
            state.unlock()
        }
    }

    @inline(__always)
    func leaveInFlight() {
        if inFlight.subtract(1, ordering: .sequentiallyConsistent).newValue == 0,
           suspendedFlag.load(ordering: .sequentiallyConsistent) {
            state.withLock { state.broadcast() }
        }
    }
}
