/// Copies ranges between devices in the background (dm: kcopyd), for snapshot copy-outs and
/// merges.
///
/// A fixed pool of jobs, each a worker thread with its bounce buffer and its two bios, reused
/// for every piece: copies never allocate per I/O and never run on a thread that maps I/O, so
/// a copy that an origin write waits for can always make progress. A request that finds every
/// job busy waits on the engine's queue, linked through itself (the caller's object, reused),
/// not on a thread.
public final class CopyEngine: @unchecked Sendable {
    /// Largest piece one read or write of a copy moves.
    public static let pieceBytes = 1 << 20
    /// Jobs in the default pool: copies that run at once.
    public static let defaultJobs = 4

    private let lock = ConditionLock()
    // Guarded by lock.
    private var head: CopyRequest?
    private var tail: CopyRequest?
    private var work: [@Sendable () -> Void] = []
    private var busyJobs = 0
    private var started = false
    public let jobs: Int

    /// The job threads start with the first copy.
    public init(jobs: Int = CopyEngine.defaultJobs) {
        self.jobs = max(1, jobs)
    }

    /// Starts `request` on a free job, or queues it until one frees; its `copyEnded` runs on
    /// the job's thread. The request must not be submitted again before that.
    public func submit(_ request: CopyRequest) {
        lock.withLock {
            startJobs()
            request.nextRequest = nil
            if let tail { tail.nextRequest = request } else { head = request }
            tail = request
            lock.signal()
        }
    }

    /// Runs `work` on a job thread: for rare synchronous work (marking a store invalid) that
    /// must not run on a thread that is mapping I/O (its own bios would queue behind the wait).
    public func perform(_ work: @escaping @Sendable () -> Void) {
        lock.withLock {
            startJobs()
            self.work.append(work)
            lock.signal()
        }
    }

    /// Jobs copying now (for tests and status).
    public var busy: Int { lock.withLock { busyJobs } }

    /// With lock held.
    private func startJobs() {
        guard !started else { return }
        started = true
        for _ in 0..<jobs {
            startThread { [self] in runJob() }
        }
    }

    private enum Next {
        case copy(CopyRequest)
        case work(@Sendable () -> Void)
    }

    private func next() -> Next {
        lock.lock()
        defer { lock.unlock() }
        while head == nil && work.isEmpty { lock.wait() }
        if !work.isEmpty { return .work(work.removeFirst()) }
        let request = head!
        head = request.nextRequest
        if head == nil { tail = nil }
        request.nextRequest = nil
        busyJobs += 1
        return .copy(request)
    }

    private func runJob() {
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: Self.pieceBytes, alignment: 4096)
        let waiter = BioWaiter()
        let read = Bio()
        let write = Bio()
        while true {
            switch next() {
            case .work(let work):
                work()
            case .copy(let request):
                let status = copy(request, buffer: buffer, read: read, write: write, waiter: waiter)
                lock.withLock { busyJobs -= 1 }
                request.copyEnded(status)
            }
        }
    }

    private func copy(_ request: CopyRequest, buffer: UnsafeMutableRawPointer, read: Bio, write: Bio,
                      waiter: BioWaiter) -> BioStatus {
        guard let destination = request.destination else { return .ok }
        if let data = request.data {
            return waiter.run(write.reset(.write, sector: request.destinationSector, sectors: request.sectors,
                                          buffer: data, flags: request.flags), on: destination)
        }
        guard let source = request.source else { return .ok }
        let pieceSectors = UInt64(Self.pieceBytes >> 9)
        var done: UInt64 = 0
        while done < request.sectors {
            let count = min(pieceSectors, request.sectors - done)
            let readStatus = waiter.run(read.reset(.read, sector: request.sourceSector + done, sectors: count,
                                                   buffer: buffer), on: source)
            guard readStatus.isOK else { return readStatus }
            let writeStatus = waiter.run(write.reset(.write, sector: request.destinationSector + done, sectors: count,
                                                     buffer: buffer, flags: request.flags), on: destination)
            guard writeStatus.isOK else { return writeStatus }
            done += count
        }
        return .ok
    }
}

/// One copy for the `CopyEngine`: `sectors` sectors from `source` at `sourceSector` (or, with
/// `data` set, those bytes) to `destination` at `destinationSector`, with `flags` on the writes.
/// The caller's object, reused from copy to copy; subclasses learn the outcome in `copyEnded`.
open class CopyRequest: @unchecked Sendable {
    public var source: BlockDevice?
    public var sourceSector: UInt64 = 0
    public var destination: BlockDevice?
    public var destinationSector: UInt64 = 0
    public var sectors: UInt64 = 0
    public var data: UnsafeMutableRawPointer?
    public var flags: BioFlags = []
    /// The engine's queue link.
    var nextRequest: CopyRequest?

    public init() {}

    /// On a job thread: the copy ended with the first error, or `.ok`.
    open func copyEnded(_ status: BioStatus) {}
}

extension Bio {
    /// Makes a finished original bio ready to go again (the copy engine's jobs reuse theirs).
    func reset(_ op: BioOp, sector: UInt64, sectors: UInt64, buffer: UnsafeMutableRawPointer?,
               flags: BioFlags = []) -> Bio {
        self.op = op
        self.sector = sector
        self.sectors = sectors
        self.buffer = buffer
        self.flags = flags
        return self
    }
}
