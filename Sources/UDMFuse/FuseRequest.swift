import CFuse3
import UDMCore

/// One FUSE request being served: libfuse's handle, the original bio that carries it through
/// the disk, its data buffer, and up to six steps (bios run one after another: the edge reads
/// of a partial-sector write, then the write). The handler fills it in and returns its thread
/// to libfuse; each step's completion starts the next, and the last one replies, on whichever
/// thread ended the bio. Held I/O (a suspended disk, a delay, a copy-out) holds the request,
/// never a thread. Requests come from a `RequestPool` and go back to it after the reply.
final class FuseRequest: BioCompletion, @unchecked Sendable {
    struct Step {
        var op: BioOp = .read
        var sector: UInt64 = 0
        var sectors: UInt64 = 0
        /// Where in the buffer the bio's data is (-1: none).
        var bufferOffset = -1
        var flags: BioFlags = []
        /// After a read step, `patchCount` bytes are copied within the buffer from
        /// `patchSource` (zeros when it is -1) to `patchDestination`.
        var patchCount = 0
        var patchSource = -1
        var patchDestination = 0
    }

    /// What to answer once every step has succeeded.
    enum Reply {
        case data(offset: Int, count: Int)
        case written(Int)
        case done
    }

    private unowned let pool: RequestPool
    private let bio = Bio()
    var buffer: UnsafeMutableRawPointer?
    /// The pool's buffer class; -1 without a buffer, `borrowedBuffer` with a lent one.
    var bufferClass = -1
    static let borrowedBuffer = -2
    /// Links a request on its pool's free list or its disk's queue.
    var next: FuseRequest?
    private var handle: fuse_req_t?
    private(set) var disk: ExposedDisk?
    private var steps: [6 of Step] = .init(repeating: Step())
    private var stepCount = 0
    private var current = 0
    private var reply = Reply.done
    /// A read-modify-write of partial sectors: runs alone among such requests of its disk,
    /// so two of them never patch the same sector from stale reads.
    private(set) var exclusive = false

    init(pool: RequestPool) {
        self.pool = pool
    }

    /// Starts filling in a request taken from the pool.
    func prepare(_ handle: fuse_req_t?, disk: ExposedDisk, reply: Reply) {
        self.handle = handle
        self.disk = disk
        self.reply = reply
        stepCount = 0
        current = 0
        exclusive = false
    }

    func add(_ step: Step) {
        steps[stepCount] = step
        stepCount += 1
        if step.patchCount > 0 { exclusive = true }
    }

    /// Runs the steps; called by the disk's queue when the request may start.
    func start() {
        submit(steps[0])
    }

    private func submit(_ step: Step) {
        bio.op = step.op
        bio.flags = step.flags
        bio.sector = step.sector
        bio.sectors = step.sectors
        bio.buffer = step.bufferOffset >= 0 ? buffer! + step.bufferOffset : nil
        bio.completion = self
        // On a ring thread, a request with a small buffer lets the ring carry its transfers
        // (see RingQueue); others, and requests on libfuse's workers, transfer synchronously.
        if bufferClass <= 0, let ring = RingQueue.ofThisThread {
            AsyncTransfer.with(ring) { bio.submit(to: disk!.device) }
        } else {
            bio.submit(to: disk!.device)
        }
    }

    func bioCompleted(_ bio: Bio) {
        guard bio.status.isOK else {
            answer(error: DiskIO.errno(for: bio.status))
            return
        }
        let step = steps[current]
        if step.patchCount > 0, let buffer {
            if step.patchSource >= 0 {
                (buffer + step.patchDestination).copyMemory(from: buffer + step.patchSource, byteCount: step.patchCount)
            } else {
                (buffer + step.patchDestination).initializeMemory(as: UInt8.self, repeating: 0, count: step.patchCount)
            }
        }
        current += 1
        if current < stepCount {
            submit(steps[current])
        } else {
            answer(error: 0)
        }
    }

    /// Replies (with `error`, or with what the request produced when it is 0) and hands the
    /// request back to its disk's queue, which starts the next one and returns this to the pool.
    func answer(error: Int32) {
        send(error: error)
        let disk = self.disk!
        self.disk = nil
        disk.queue.finished(self)
    }

    /// Fails a request that never started (its disk went away) and returns it to the pool.
    func refuse(error: Int32) {
        send(error: error)
        disk = nil
        release()
    }

    private func send(error: Int32) {
        if error != 0 {
            fuse_reply_err(handle, error)
        } else {
            switch reply {
            case .data(let offset, let count):
                fuse_reply_buf(handle, (buffer! + offset).assumingMemoryBound(to: CChar.self), count)
            case .written(let count):
                fuse_reply_write(handle, count)
            case .done:
                fuse_reply_err(handle, 0)
            }
        }
        handle = nil
    }

    /// Back to the pool (by the queue, once it no longer counts this request).
    func release() {
        pool.give(self)
    }
}
