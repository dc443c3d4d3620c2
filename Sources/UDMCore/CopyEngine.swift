/// Copies ranges between devices in the background (dm: kcopyd), for snapshot copy-outs and
/// merges. A fixed set of worker threads, each with one bounce buffer, so copies never
/// allocate per I/O and never run on a thread that maps I/O: a copy that an origin write
/// waits for can always make progress.
public final class CopyEngine: @unchecked Sendable {
    public struct Destination: Sendable {
        public let device: BlockDevice
        public let sector: UInt64
        public init(_ device: BlockDevice, sector: UInt64) {
            self.device = device
            self.sector = sector
        }
    }

    private struct Job {
        let source: BlockDevice?
        let sector: UInt64
        let destinations: [Destination]
        let sectors: UInt64
        let flags: BioFlags
        let done: @Sendable (BioStatus) -> Void
    }

    /// Largest piece one read or write of a copy moves.
    public static let pieceBytes = 1 << 20
    private let lock = ConditionLock()
    private var queue: [Job] = []
    private var queueHead = 0
    private let workers: Int
    private var started = false

    /// Worker threads start with the first copy.
    public init(workers: Int = 4) {
        self.workers = max(1, workers)
    }

    private func startWorkers() {
        for _ in 0..<workers {
            startThread { [self] in work() }
        }
    }

    /// Copies `sectors` sectors from `source` at `sector` to every destination; `done` runs on
    /// a worker thread with the first error, or `.ok`. `flags` go on the writes (e.g. FUA).
    public func copy(from source: BlockDevice, sector: UInt64, to destinations: [Destination], sectors: UInt64,
                     flags: BioFlags = [], done: @escaping @Sendable (BioStatus) -> Void) {
        enqueue(Job(source: source, sector: sector, destinations: destinations, sectors: sectors, flags: flags, done: done))
    }

    /// Runs `work` on a worker thread: for synchronous I/O that must not run on a thread that
    /// is mapping I/O (its own bios would queue behind the wait for them).
    public func perform(_ work: @escaping @Sendable () -> Void) {
        enqueue(Job(source: nil, sector: 0, destinations: [], sectors: 0, flags: [], done: { _ in work() }))
    }

    private func enqueue(_ job: Job) {
        lock.withLock {
            if !started {
                started = true
                startWorkers()
            }
            queue.append(job)
            lock.signal()
        }
    }

    private func nextJob() -> Job {
        lock.lock()
        defer { lock.unlock() }
        while queueHead == queue.count { lock.wait() }
        let job = queue[queueHead]
        queueHead += 1
        if queueHead == queue.count {
            queue.removeAll(keepingCapacity: true)
            queueHead = 0
        }
        return job
    }

    private func work() {
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: Self.pieceBytes, alignment: 4096)
        let waiter = BioWaiter()
        while true {
            let job = nextJob()
            job.done(run(job, buffer: buffer, waiter: waiter))
        }
    }

    private func run(_ job: Job, buffer: UnsafeMutableRawPointer, waiter: BioWaiter) -> BioStatus {
        guard let source = job.source else { return .ok }
        let pieceSectors = UInt64(Self.pieceBytes >> 9)
        var done: UInt64 = 0
        while done < job.sectors {
            let count = min(pieceSectors, job.sectors - done)
            let read = waiter.run(Bio(op: .read, sector: job.sector + done, sectors: count, buffer: buffer), on: source)
            guard read.isOK else { return read }
            for destination in job.destinations {
                let write = waiter.run(Bio(op: .write, sector: destination.sector + done, sectors: count,
                                           buffer: buffer, flags: job.flags), on: destination.device)
                guard write.isOK else { return write }
            }
            done += count
        }
        return .ok
    }
}
