import UDMCore
import UDMExceptionStore

/// `snapshot <origin> <COW> <P|PO|N> <chunk size>`: a point-in-time copy of `origin` that
/// stores only the chunks that differ, in an exception store on `COW` (dm-snap.c, snapshot).
///
/// A read of a chunk with an exception comes from the COW device, any other from the origin
/// (tracked until it ends, so the origin chunk is not overwritten under it). A write to a
/// chunk without an exception first copies the origin chunk to a new COW chunk, commits the
/// exception, then goes to the COW device; a write of the whole chunk skips the copy: it is
/// written to the new COW chunk itself and ends once the exception is committed (as in dm).
/// The origin's writes trigger the same copies (see `Origin`). Store `P` is persistent (the
/// kernel's format), `PO` persistent with overflow (a snapshot write that finds the COW full
/// fails and so does every later snapshot write; the snapshot stays readable), `N` transient.
/// A full COW otherwise invalidates the snapshot: its I/O fails, the origin goes on.
/// Chunk size: a power of two up to 2^21 sectors, 0 meaning the header's or 32; a persistent
/// header's chunk size wins. Table: `<origin> <COW> <P|PO|N> <chunk>`. Status:
/// `<sectors allocated>/<total sectors> <metadata sectors>`, `Invalid` or `Overflow`.
public final class SnapshotTarget: Target, @unchecked Sendable {
    public static let name = "snapshot"
    public static let version = (1, 16, 0)

    enum State { case valid, overflow, invalid }

    enum OriginWriteNeed {
        case none
        case pending(PendingException)
        case started(PendingException)
    }

    private let originDevice: BlockDevice
    private let cow: BlockDevice
    private let originName: String
    private let cowName: String
    private let storeType: String
    private let store: ExceptionStore
    private let origin: Origin
    private let copyEngine: CopyEngine
    let chunkSize: UInt64
    private let chunkShift: UInt64

    // Guarded by origin.lock.
    private var completed: [UInt64: UInt64] = [:]
    private var pending: [UInt64: PendingException] = [:]
    private var trackedReads: [UInt64: Int] = [:]
    private var spareExceptions: [PendingException] = []
    private var state = State.valid
    private(set) var isActive = false

    public init(arguments: [String], context: TargetContext) throws {
        let parsed = try SnapshotArguments(arguments, context: context, target: Self.name, stores: ["P", "PO", "N"])
        originName = parsed.originName
        cowName = parsed.cowName
        storeType = parsed.storeType
        originDevice = parsed.origin
        cow = parsed.cow
        let origin = OriginRegistry.of(context.services).origin(for: parsed.origin)
        self.origin = origin
        // Two live snapshots over one COW would both write its metadata. dm hands the
        // exceptions over to a reloaded table; udm does not, so it refuses.
        let cowPath = cow.name
        if origin.lock.withLock({ origin.containsSnapshot { $0.cow.name == cowPath } }) {
            throw TargetError("COW device \(cowName) is in use by a live snapshot; remove that snapshot first (a snapshot's table cannot be reloaded over its own COW)", argument: 2)
        }
        let chunk = parsed.chunkSize
        // A transient store has no header to take a chunk size from (dm: "Chunk size not set").
        if storeType == "N" && chunk == 0 {
            throw TargetError("chunk size not set: a transient (N) snapshot needs a chunk size other than 0", argument: 4)
        }
        store = storeType == "N" ? TransientStore(cow: cow, chunkSize: chunk) : PersistentStore(cow: cow, chunkSize: chunk)
        var found: [UInt64: UInt64] = [:]
        do {
            if try !store.read({ found[$0] = $1 }) { state = .invalid }
        } catch {
            throw TargetError("\(error)", argument: 2)
        }
        completed = found
        chunkSize = store.chunkSize
        chunkShift = UInt64(chunkSize.trailingZeroBitCount)
        copyEngine = context.services.copyEngine
    }

    deinit {
        origin.snapshotWentAway()
    }

    public var maxIOLength: UInt64 { chunkSize }
    /// One flush for the origin, one for the COW device.
    public var flushBios: Int { 2 }
    public var discardBios: Int { 0 }
    public var writeZeroesBios: Int { 0 }
    public var perBioDataSize: Int { 16 }

    public func resume() {
        origin.lock.withLock { isActive = true }
        origin.register(self)
    }

    // MARK: the snapshot's own I/O

    public func map(_ bio: Bio) -> MapResult {
        if bio.op == .flush {
            return .remapped(to: bio.duplicateIndex == 0 ? originDevice : cow)
        }
        let chunk = bio.sector >> chunkShift
        var started: PendingException?
        let result: MapResult = origin.lock.withLock {
            untrack(bio)
            // Once overflowed, every write fails, even to a chunk with an exception (as dm's
            // snapshot_map); reads go on.
            if state == .invalid || (state == .overflow && bio.op == .write) { return .kill(.ioError) }
            if let new = completed[chunk] {
                bio.sector = (new << chunkShift) | (bio.sector & (chunkSize - 1))
                return .remapped(to: cow)
            }
            if bio.op == .read {
                track(bio, chunk: chunk)
                return .remapped(to: originDevice)
            }
            let exception: PendingException
            if let existing = pending[chunk] {
                exception = existing
            } else {
                if origin.holdIfBusy(bio, snapshot: self) { return .submitted }
                guard let new = store.prepare() else {
                    if storeType == "PO" {
                        state = .overflow
                    } else {
                        invalidate()
                    }
                    return .kill(.ioError)
                }
                exception = makeException(old: chunk, new: new)
                origin.copyStarted()
                started = exception
                if bio.sectors == chunkSize {
                    exception.fullChunkWrite = bio
                    return .submitted
                }
            }
            exception.snapshotBios.append(bio)
            return .submitted
        }
        if let started {
            if let bio = started.fullChunkWrite {
                writeWholeChunk(started, from: bio)
            } else {
                startCopy(started)
            }
        }
        return result
    }

    /// A write covering the whole chunk is the exception's data: it goes to the new COW chunk
    /// (by the copy engine, which then commits) instead of a copy of the origin chunk.
    private func writeWholeChunk(_ exception: PendingException, from bio: Bio) {
        exception.source = nil
        exception.data = bio.buffer
        exception.flags = bio.flags
        exception.destination = cow
        exception.destinationSector = exception.new << chunkShift
        exception.sectors = chunkSize
        exception.inFlight = self
        copyEngine.submit(exception)
    }

    /// With origin.lock held: a pending exception for old → new, from the spares if there is one.
    private func makeException(old: UInt64, new: UInt64) -> PendingException {
        let exception = spareExceptions.popLast() ?? PendingException(snapshot: self)
        exception.old = old
        exception.new = new
        pending[old] = exception
        return exception
    }

    /// A write held back by the copy throttle goes through the mapping again.
    func remap(_ bio: Bio) {
        switch map(bio) {
        case .remapped(let device): bio.submit(to: device)
        case .submitted: break
        case .kill(let status): bio.end(status)
        case .requeue: bio.end(.ioError)
        }
    }

    /// A snapshot read of the origin: counted until it ends, so that an exception for the
    /// chunk is not completed (and the origin chunk overwritten) while the read is in flight.
    private func track(_ bio: Bio, chunk: UInt64) {
        trackedReads[chunk, default: 0] += 1
        bio.perBioData!.storeBytes(of: chunk, as: UInt64.self)
        bio.perBioData!.storeBytes(of: 1, toByteOffset: 8, as: UInt64.self)
    }

    private func untrack(_ bio: Bio) {
        guard let data = bio.perBioData, data.load(fromByteOffset: 8, as: UInt64.self) == 1 else { return }
        data.storeBytes(of: 0, toByteOffset: 8, as: UInt64.self)
        let chunk = data.load(as: UInt64.self)
        trackedReads[chunk, default: 1] -= 1
        if trackedReads[chunk] == 0 { trackedReads[chunk] = nil }
        origin.lock.broadcast()
    }

    public func endIO(_ bio: Bio) {
        guard let data = bio.perBioData, data.load(fromByteOffset: 8, as: UInt64.self) == 1 else { return }
        origin.lock.withLock { untrack(bio) }
    }

    // MARK: copies, triggered by the snapshot's writes or the origin's

    /// With origin.lock held: what an origin write to `sector` needs from this snapshot.
    func exceptionForOriginWrite(at sector: UInt64) -> OriginWriteNeed {
        guard isActive, state != .invalid, sector < originDevice.sectors else { return .none }
        let chunk = sector >> chunkShift
        if completed[chunk] != nil { return .none }
        if let existing = pending[chunk] { return .pending(existing) }
        guard let new = store.prepare() else {
            invalidate()
            return .none
        }
        return .started(makeException(old: chunk, new: new))
    }

    func startCopy(_ exception: PendingException) {
        let start = exception.old << chunkShift
        let sectors = min(chunkSize, originDevice.sectors - start)
        exception.source = originDevice
        exception.sourceSector = start
        exception.data = nil
        exception.flags = []
        exception.destination = cow
        exception.destinationSector = exception.new << chunkShift
        exception.sectors = sectors
        exception.inFlight = self
        copyEngine.submit(exception)
    }

    /// On a copy-engine thread: the exception's chunk is on the COW device (or failed to get there).
    func copied(_ exception: PendingException, status: BioStatus) {
        if status.isOK {
            store.commit(old: exception.old, new: exception.new) { [self] ok in committed(exception, ok: ok) }
        } else {
            store.abandon(exception.new)
            committed(exception, ok: false)
        }
    }

    /// The exception is durable (or failed): make it complete and a spare again, then let
    /// its writes go (last, so that whoever waits for them finds the snapshot settled).
    private func committed(_ exception: PendingException, ok: Bool) {
        var snapshotBios: [Bio] = []
        var originBios: [Bio] = []
        var completions: [Completion] = []
        let new = exception.new
        let fullChunkWrite: Bio? = origin.lock.withLock {
            if ok {
                while trackedReads[exception.old, default: 0] > 0 { origin.lock.wait() }
                completed[exception.old] = exception.new
            } else {
                invalidate()
            }
            pending[exception.old] = nil
            swap(&snapshotBios, &exception.snapshotBios)
            swap(&originBios, &exception.originBios)
            swap(&completions, &exception.completions)
            defer {
                exception.fullChunkWrite = nil
                exception.source = nil
                exception.destination = nil
                exception.data = nil
                spareExceptions.append(exception)
            }
            return exception.fullChunkWrite
        }
        origin.copyEnded()
        fullChunkWrite?.end(ok ? .ok : .ioError)
        for bio in snapshotBios {
            if ok {
                bio.sector = (new << chunkShift) | (bio.sector & (chunkSize - 1))
                bio.submit(to: cow)
            } else {
                bio.end(.ioError)
            }
        }
        for bio in originBios { origin.retry(bio) }
        for completion in completions { completion.signal() }
    }

    /// With origin.lock held: the snapshot fails from now on; the store records it (on a
    /// copy-engine thread, as this may run while mapping I/O).
    private func invalidate() {
        guard state != .invalid else { return }
        state = .invalid
        copyEngine.perform { [store] in store.invalidate() }
    }

    public func status(_ kind: StatusKind) -> String {
        switch kind {
        case .table:
            return "\(originName) \(cowName) \(storeType) \(chunkSize)"
        case .info:
            switch origin.lock.withLock({ state }) {
            case .invalid: return "Invalid"
            case .overflow: return "Overflow"
            case .valid:
                let usage = store.usage
                return "\(usage.allocated)/\(usage.total) \(usage.metadata)"
            }
        }
    }
}
