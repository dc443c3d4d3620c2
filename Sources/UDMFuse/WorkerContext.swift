import Glibc
import UDMCore

/// What one libfuse worker thread needs to turn a request into a bio and wait for it: an
/// aligned buffer for reads and partial-sector writes, a reusable bio, and a wait point.
/// One per worker thread, made on first use; nothing is allocated per request.
final class WorkerContext {
    /// max_write (1 MiB) plus a sector at each end for requests that do not start or end on
    /// a sector boundary.
    static let bufferSize = (1 << 20) + 2 * sectorSize
    let buffer: UnsafeMutableRawPointer
    private let bio = Bio()
    private let waiter = BioWaiter()

    private init() {
        buffer = .allocate(byteCount: WorkerContext.bufferSize, alignment: 4096)
    }

    deinit { buffer.deallocate() }

    /// Submits one bio to `device` and waits for it. A suspended device holds it; the worker
    /// waits with it.
    func run(_ op: BioOp, on device: BlockDevice, sector: UInt64, sectors: UInt64,
             buffer: UnsafeMutableRawPointer? = nil, flags: BioFlags = []) -> BioStatus {
        bio.op = op
        bio.flags = flags
        bio.sector = sector
        bio.sectors = sectors
        bio.buffer = buffer
        return waiter.run(bio, on: device)
    }

    private static let local = ThreadLocal { WorkerContext() }

    static var current: WorkerContext { local.value }
}
