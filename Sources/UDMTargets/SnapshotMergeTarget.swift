import UDMCore
import UDMExceptionStore

/// `snapshot-merge <origin> <COW> P <chunk size>`: the origin device while a snapshot is being
/// merged back into it (dm-snap.c, snapshot-merge). The device shows the snapshot's content at
/// once; a background thread copies the exceptions back to the origin and removes them.
///
/// Merge step, from the last exception backwards: take up to `batchChunks` of the last
/// exceptions; let every other snapshot of the origin copy those chunks first (they keep their
/// own point in time); mark them as merging and wait for I/O to them already in flight; copy
/// them COW → origin (runs consecutive in both as one copy); flush the origin; clear their
/// records on disk (flush + FUA); forget them; let the I/O held for them through. A crash
/// between the copy and the clearing re-copies the same data on restart: the merge resumes
/// from the COW file.
/// I/O meanwhile: a chunk that still has an exception is read and written on the COW, one
/// being merged waits, any other goes to the origin with origin semantics.
/// Table: `<origin> <COW> P <chunk>`. Status: `<sectors allocated>/<total sectors> <metadata
/// sectors>` (done when the first equals the last), or `Merge failed`.
public final class SnapshotMergeTarget: Target, @unchecked Sendable {
    public static let name = "snapshot-merge"
    public static let version = (1, 5, 0)
    /// Largest merge step, in chunks: one origin flush and one metadata write per step.
    static let batchChunks = 256

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
    private var merging: Set<UInt64> = []
    private var inFlight: [UInt64: Int] = [:]
    private var held: [Bio] = []
    private var failed = false
    private var running = false
    private var stopRequested = false
    private var whenDone: (@Sendable () -> Void)?

    public init(arguments: [String], context: TargetContext) throws {
        let parsed = try SnapshotArguments(arguments, context: context, target: Self.name, stores: ["P"])
        originName = parsed.originName
        cowName = parsed.cowName
        originDevice = parsed.origin
        cow = parsed.cow
        let chunk = parsed.chunkSize
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

    /// The merging origin cuts I/O at the smallest chunk of every snapshot of the origin,
    /// this one included (dm: snapshot_merge_resume), so an origin write never spans two
    /// chunks of another snapshot of which only the first would be copied out.
    public var maxIOLength: UInt64 {
        let others = origin.smallestChunk
        return others == 0 ? chunkSize : min(chunkSize, others)
    }
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
            if merging.contains(chunk) {
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
        let (start, done): (Bool, (@Sendable () -> Void)?) = lock.withLock {
            stopRequested = false
            guard !running, !failed else { return (false, nil) }
            guard !exceptions.isEmpty else { return (false, whenDone.take()) }
            running = true
            return (true, nil)
        }
        if start { startThread { [self] in mergeLoop() } }
        done?()
    }

    /// The merge stops while the device is suspended, and goes on at resume.
    public func presuspend() {
        lock.withLock {
            stopRequested = true
            while running { lock.wait() }
        }
    }

    /// Runs `done` once every exception is merged: at once if that is so already, else on the
    /// merge thread with no lock of this target held.
    public func whenMerged(_ done: @escaping @Sendable () -> Void) {
        let finished: Bool = lock.withLock {
            guard exceptions.isEmpty, !running, !failed else {
                whenDone = done
                return false
            }
            return true
        }
        if finished { done() }
    }

    private func mergeLoop() {
        let waiter = BioWaiter()
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: CopyEngine.pieceBytes, alignment: 4096)
        defer { buffer.deallocate() }
        var merged = false
        while lock.withLock({ !stopRequested }) {
            let batch = store.lastExceptions(limit: Self.batchChunks)
            guard !batch.isEmpty else {
                merged = true
                break
            }
            do {
                try merge(batch, buffer: buffer, waiter: waiter)
            } catch {
                lock.withLock { failed = true }
                release()
                break
            }
        }
        let done: (@Sendable () -> Void)? = lock.withLock {
            running = false
            lock.broadcast()
            return merged ? whenDone.take() : nil
        }
        done?()
    }

    private struct MergeError: Error {}

    private func merge(_ batch: [(old: UInt64, new: UInt64)], buffer: UnsafeMutableRawPointer, waiter: BioWaiter) throws {
        let chunks = batch.sorted { $0.old < $1.old }
        // A corrupt COW file can name an origin chunk past the origin's end: fail the merge
        // (status "Merge failed") instead of trapping on the arithmetic below.
        guard originDevice.sectors > 0, let last = chunks.last, last.old <= (originDevice.sectors - 1) >> chunkShift else {
            throw MergeError()
        }
        for chunk in chunks {
            waitForOtherSnapshots(from: chunk.old << chunkShift, sectors: chunkSize)
        }
        let olds = Set(chunks.map(\.old))
        lock.withLock {
            merging = olds
            while olds.contains(where: { inFlight[$0] != nil }) { lock.wait() }
        }
        // Runs consecutive in both origin and COW go as one copy.
        var index = 0
        while index < chunks.count {
            var end = index + 1
            while end < chunks.count, chunks[end].old == chunks[end - 1].old + 1, chunks[end].new == chunks[end - 1].new + 1 {
                end += 1
            }
            let start = chunks[index].old << chunkShift
            let sectors = min(UInt64(end - index) << chunkShift, originDevice.sectors - start)
            try copy(from: chunks[index].new << chunkShift, to: start, sectors: sectors, buffer: buffer, waiter: waiter)
            index = end
        }
        guard waiter.run(Bio(op: .flush), on: originDevice).isOK else { throw MergeError() }
        do {
            try store.commitMerge(chunks.count)
        } catch {
            throw MergeError()
        }
        lock.withLock { olds.forEach { exceptions[$0] = nil } }
        release()
    }

    /// COW → origin in pieces of the bounce buffer.
    private func copy(from cowSector: UInt64, to originSector: UInt64, sectors: UInt64,
                      buffer: UnsafeMutableRawPointer, waiter: BioWaiter) throws {
        let piece = UInt64(CopyEngine.pieceBytes >> 9)
        var done: UInt64 = 0
        while done < sectors {
            let count = min(piece, sectors - done)
            guard waiter.run(Bio(op: .read, sector: cowSector + done, sectors: count, buffer: buffer), on: cow).isOK,
                  waiter.run(Bio(op: .write, sector: originSector + done, sectors: count, buffer: buffer), on: originDevice).isOK
            else { throw MergeError() }
            done += count
        }
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
                if origin.chunkCopied(at: sector, signal: copied) { break }
                copied.wait()
            }
            sector += step
        }
    }

    /// Ends the merging step and sends the I/O held for it through the mapping again.
    private func release() {
        let bios: [Bio] = lock.withLock {
            merging = []
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
