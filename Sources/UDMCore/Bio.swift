import Synchronization

/// Told when a bio it submitted has ended.
public protocol BioCompletion: AnyObject {
    func bioCompleted(_ bio: Bio)
}

/// One I/O request (dm: `struct bio`, and for an original bio being mapped, its `dm_io`).
///
/// A bio is either an *original* (made by whoever submits I/O: the FUSE layer, a target doing
/// its own I/O) whose end is reported to `completion`, or a *clone* taken from a device's
/// `BioSet`, whose end is reported to its parent and which then goes back to its pool. A clone
/// remapped onto a lower mapped device is, for that device, an original in turn.
public final class Bio: @unchecked Sendable {
    public var op: BioOp
    public var flags: BioFlags
    /// First sector, on the device the bio is currently submitted to.
    public var sector: UInt64
    /// Length in sectors (0 for a flush).
    public var sectors: UInt64
    /// `sectors * 512` bytes for a read or write; nil otherwise.
    public var buffer: UnsafeMutableRawPointer?
    /// Set by `end`.
    public private(set) var status: BioStatus = .ok
    /// Told when an original ends (unused for clones).
    public var completion: BioCompletion?
    /// The device the bio is submitted to; set by the submitter or by the core on remap.
    public var device: BlockDevice?
    /// Which of a target's duplicate clones this is (dm: dm_bio_get_target_bio_nr).
    public internal(set) var duplicateIndex: Int = 0
    /// Room for the mapping target's own per-I/O state; `perBioDataSize` bytes, clones only.
    public let perBioData: UnsafeMutableRawPointer?
    /// Caller-owned word, carried untouched (e.g. which request an original belongs to).
    public var context: UInt64 = 0

    // Clone bookkeeping.
    var parent: Bio?
    unowned(unsafe) var pool: BioSet?
    var mappedBy: Target?

    // Original bookkeeping while a mapped device splits it (dm: dm_io and the bio's iterator).
    let pending = Atomic<Int>(0)
    let firstError = Atomic<Int32>(0)
    let requeueRequested = Atomic<Bool>(false)
    var splitting = false
    var nextSector: UInt64 = 0
    var remainingSectors: UInt64 = 0
    var bufferOffset: Int = 0
    /// The next target to send flushes to, while a flush or PREFLUSH is being sent out.
    var flushingTarget: Int?
    /// A write whose PREFLUSH is still being sent or has not ended yet: its data waits.
    var awaitingPreflush = false
    /// Sent on by a pool it was parked on: it goes before originals parked after it.
    var resumedFromPark = false
    /// A set of duplicate clones its device's set allocator took for it, and how many it needs.
    var reservedClones: Bio?
    var clonesNeeded = 0
    var admittedAt: MappedDevice?
    /// For the device's statistics: when it was admitted, and how many pieces it was cut into.
    var startedAt: UInt64 = 0
    var pieces: UInt32 = 0

    /// Intrusive link: a bio sits on at most one list (a thread's BioList, a deferred list, a pool).
    var next: Bio?

    public init(op: BioOp = .read, sector: UInt64 = 0, sectors: UInt64 = 0,
                buffer: UnsafeMutableRawPointer? = nil, flags: BioFlags = []) {
        self.op = op
        self.sector = sector
        self.sectors = sectors
        self.buffer = buffer
        self.flags = flags
        self.perBioData = nil
    }

    init(pool: BioSet, perBioDataSize: Int) {
        op = .read
        sector = 0
        sectors = 0
        flags = []
        self.pool = pool
        if perBioDataSize > 0 {
            let data = UnsafeMutableRawPointer.allocate(byteCount: perBioDataSize, alignment: 16)
            data.initializeMemory(as: UInt8.self, repeating: 0, count: perBioDataSize)
            perBioData = data
        } else {
            perBioData = nil
        }
    }

    deinit { perBioData?.deallocate() }

    public var byteCount: Int { Int(sectors) << 9 }

    /// Ends the bio. A clone reports to its parent and returns to its pool; an original tells
    /// its `completion`.
    public func end(_ status: BioStatus) {
        self.status = status
        if let parent {
            let target = mappedBy
            target?.endIO(self)
            let pool = self.pool
            self.parent = nil
            self.mappedBy = nil
            self.device = nil
            parent.childEnded(status)
            pool?.release(self)
        } else {
            completion?.bioCompleted(self)
        }
    }

    /// Submits the bio to `device` (or to `self.device`), depth-first on this thread.
    public func submit(to device: BlockDevice? = nil) {
        if let device { self.device = device }
        BioList.submit(self)
    }

    /// For a target's `map`: take only the first `sectors` of this clone; the core sends the
    /// rest through the table again (dm_accept_partial_bio). Reads and writes only.
    public func acceptPartial(_ sectors: UInt64) {
        precondition(sectors > 0 && sectors <= self.sectors, "acceptPartial outside the clone")
        self.sectors = sectors
        BioList.current.acceptedSectors = sectors
    }

    /// Records one clone's end; the last one to end finishes the original.
    func childEnded(_ status: BioStatus) {
        if status == .requeue {
            requeueRequested.store(true, ordering: .relaxed)
        } else if !status.isOK {
            _ = firstError.compareExchange(expected: 0, desired: status.errno, ordering: .relaxed)
        }
        dropReference()
    }

    func takeReference(_ count: Int = 1) {
        pending.add(count, ordering: .relaxed)
    }

    func dropReference() {
        if pending.subtract(1, ordering: .acquiringAndReleasing).newValue == 0 {
            admittedAt?.originalFinished(self)
        }
    }
}
