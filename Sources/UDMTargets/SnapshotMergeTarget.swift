import UDMCore
import UDMExceptionStore

/// `snapshot-merge <origin> <COW> P <chunk size>`: the origin device while a snapshot is being
/// merged back into it (dm-snap.c, snapshot-merge). The device shows the snapshot's content at
/// once; a background thread copies the exceptions back to the origin and removes them.
///
/// Merge step, from the last exception backwards: take up to `batchChunks` exceptions that are
/// consecutive in both origin and COW; let every other snapshot of the origin copy that range
/// first (they keep their own point in time); mark the range as merging and wait for I/O to it
/// already in flight; copy COW → origin in one go; flush the origin; clear the records on disk
/// (flush + FUA); forget them; let the I/O held for the range through. A crash between the copy
/// and the clearing re-copies the same data on restart: the merge resumes from the COW file.
/// I/O meanwhile: a chunk that still has an exception is read and written on the COW, one
/// being merged waits, any other goes to the origin with origin semantics.
/// Table: `<origin> <COW> P <chunk>`. Status: `<sectors allocated>/<total sectors> <metadata
/// sectors>` (done when the first equals the last), or `Merge failed`.
public final class SnapshotMergeTarget: Target, @unchecked Sendable {
    public static let name = "snapshot-merge"
    public static let version = (1, 5, 0)
    /// Largest merge step, in chunks (a step is copied in pieces of `CopyEngine.pieceBytes`).
    static let batchChunks = 64

    private let originDevice: BlockDevice
    private let cow: BlockDevice
    private let originName: String
    private let cowName: String
    private let store: PersistentStore
    private let origin: Origin
    private let chunkSize: UInt64
    private let chunkShift: UInt64

    private let lock = ConditionLock()
    // Guarded by lock.
    private var exceptions: [UInt64: UInt64] = [:]
    private var merging: ClosedRange<UInt64>?
    private var inFlight: [UInt64: Int] = [:]
    private var held: [Bio] = []
    private var failed = false
    private var running = false
    private var stopRequested = false

    public init(arguments: [String], context: TargetContext) throws {
        guard arguments.count == 4 else {
            throw TargetError("snapshot-merge takes <origin> <COW> P <chunk size>; got \(arguments.count) arguments")
        }
        guard arguments[2].uppercased() == "P" else {
            throw TargetError("snapshot-merge needs a persistent store (P), not '\(arguments[2])'", argument: 3)
        }
        guard let chunk = UInt64(arguments[3]), chunk & (chunk &- 1) == 0, chunk <= PersistentStore.maxChunkSize else {
            throw TargetError("invalid chunk size '\(arguments[3])'", argument: 4)
        }
        guard context.begin == 0 else { throw TargetError("snapshot-merge must map its device from sector 0") }
        originName = arguments[0]
        cowName = arguments[1]
        originDevice = try context.openDevice(originName, argument: 1, sectors: context.length)
        cow = try context.openDevice(cowName, argument: 2)
        store = PersistentStore(cow: cow, chunkSize: chunk)
        var found: [UInt64: UInt64] = [:]
        do {
            guard try store.read({ found[$0] = $1 }) else {
                throw TargetError("the snapshot in \(cowName) is invalid: there is nothing consistent to merge", argument: 2)
            }
        } catch let error as StoreError {
            throw TargetError("\(error)", argument: 2)
        }
        exceptions = found
        chunkSize = store.chunkSize
        chunkShift = UInt64(chunkSize.trailingZeroBitCount)
        origin = OriginRegistry.of(context.services).origin(for: originDevice)
    }

    public var maxIOLength: UInt64 { chunkSize }
    /// One flush for the origin, one for the COW device.
    public var flushBios: Int { 2 }
    public var discardBios: Int { 0 }
    public var writeZeroesBios: Int { 0 }
    public var perBioDataSize: Int { 16 }

    // MARK: I/O while merging

    public func map(_ bio: Bio) -> MapResult {
        if bio.op == .flush {
            return .remapped(to: bio.duplicateIndex == 0 ? originDevice : cow)
        }
        let chunk = bio.sector >> chunkShift
        enum Route { case cow, held, origin }
        let route: Route = lock.withLock {
            bio.perBioData!.storeBytes(of: 0, toByteOffset: 8, as: UInt64.self)
            if merging?.contains(chunk) == true {
                held.append(bio)
                return .held
            }
            guard let new = exceptions[chunk] else { return .origin }
            inFlight[chunk, default: 0] += 1
            bio.perBioData!.storeBytes(of: chunk, as: UInt64.self)
            bio.perBioData!.storeBytes(of: 1, toByteOffset: 8, as: UInt64.self)
            bio.sector = (new << chunkShift) | (bio.sector & (chunkSize - 1))
            return .cow
        }
        switch route {
        case .cow: return .remapped(to: cow)
        case .held: return .submitted
        case .origin:
            if bio.op == .write {
                return origin.writeMayProceed(bio) ? .remapped(to: originDevice) : .submitted
            }
            return .remapped(to: originDevice)
        }
    }

    public func endIO(_ bio: Bio) {
        guard let data = bio.perBioData, data.load(fromByteOffset: 8, as: UInt64.self) == 1 else { return }
        data.storeBytes(of: 0, toByteOffset: 8, as: UInt64.self)
        let chunk = data.load(as: UInt64.self)
        lock.withLock {
            inFlight[chunk, default: 1] -= 1
            if inFlight[chunk] == 0 { inFlight[chunk] = nil }
            lock.broadcast()
        }
    }

    // MARK: the merge

    public func resume() {
        let start: Bool = lock.withLock {
            stopRequested = false
            guard !running, !failed, !exceptions.isEmpty else { return false }
            running = true
            return true
        }
        if start { startThread { [self] in mergeLoop() } }
    }

    /// The merge stops while the device is suspended, and goes on at resume.
    public func presuspend() {
        lock.withLock {
            stopRequested = true
            while running { lock.wait() }
        }
    }

    private func mergeLoop() {
        let waiter = BioWaiter()
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: CopyEngine.pieceBytes, alignment: 4096)
        defer { buffer.deallocate() }
        while lock.withLock({ !stopRequested }) {
            let batch = store.lastExceptions(limit: Self.batchChunks)
            guard let newest = batch.first, let oldest = batch.last else { break }
            do {
                try merge(old: oldest.old...newest.old, new: oldest.new, buffer: buffer, waiter: waiter)
            } catch {
                lock.withLock { failed = true }
                release()
                break
            }
        }
        lock.withLock {
            running = false
            lock.broadcast()
        }
    }

    private struct MergeError: Error {}

    private func merge(old range: ClosedRange<UInt64>, new: UInt64, buffer: UnsafeMutableRawPointer, waiter: BioWaiter) throws {
        // A corrupt COW file can name an origin chunk past the origin's end: fail the merge
        // (status "Merge failed") instead of trapping on the arithmetic below.
        guard originDevice.sectors > 0, range.lowerBound <= (originDevice.sectors - 1) >> chunkShift else { throw MergeError() }
        let start = range.lowerBound << chunkShift
        let sectors = min(UInt64(range.count) << chunkShift, originDevice.sectors - start)
        waitForOtherSnapshots(from: start, sectors: sectors)
        lock.withLock {
            merging = range
            while range.contains(where: { inFlight[$0] != nil }) { lock.wait() }
        }
        let piece = UInt64(CopyEngine.pieceBytes >> 9)
        var done: UInt64 = 0
        while done < sectors {
            let count = min(piece, sectors - done)
            guard waiter.run(Bio(op: .read, sector: (new << chunkShift) + done, sectors: count, buffer: buffer), on: cow).isOK,
                  waiter.run(Bio(op: .write, sector: start + done, sectors: count, buffer: buffer), on: originDevice).isOK
            else { throw MergeError() }
            done += count
        }
        guard waiter.run(Bio(op: .flush), on: originDevice).isOK else { throw MergeError() }
        do {
            try store.commitMerge(range.count)
        } catch {
            throw MergeError()
        }
        lock.withLock { range.forEach { exceptions[$0] = nil } }
        release()
    }

    /// Every other snapshot of the origin copies [start, start+sectors) before the merge
    /// overwrites it on the origin.
    private func waitForOtherSnapshots(from start: UInt64, sectors: UInt64) {
        let step = origin.smallestChunk
        guard step > 0 else { return }
        var sector = start - start % step
        while sector < start + sectors {
            while true {
                let copied = Completion()
                if origin.chunkCopied(at: sector, then: { copied.signal() }) { break }
                copied.wait()
            }
            sector += step
        }
    }

    /// Ends the merging range and sends the I/O held for it through the mapping again.
    private func release() {
        let bios: [Bio] = lock.withLock {
            merging = nil
            defer { held = [] }
            return held
        }
        for bio in bios {
            switch map(bio) {
            case .remapped(let device): bio.submit(to: device)
            case .submitted: break
            case .kill(let status): bio.end(status)
            case .requeue: bio.end(.ioError)
            }
        }
    }

    public func status(_ kind: StatusKind) -> String {
        switch kind {
        case .table:
            return "\(originName) \(cowName) P \(chunkSize)"
        case .info:
            if lock.withLock({ failed }) { return "Merge failed" }
            let usage = store.usage
            return "\(usage.allocated)/\(usage.total) \(usage.metadata)"
        }
    }
}
