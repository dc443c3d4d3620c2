import CFuse3
import Glibc
import UDMCore

/// Byte-addressed file I/O on a disk, turned into sector bios the way a block device would
/// take them: I/O past the end is short (reads) or ENOSPC (writes); a write that does not
/// cover whole sectors reads the edge sectors, patches them and writes them back. Each call
/// fills in a pooled `FuseRequest` and queues it on the disk; the reply comes from its
/// completion. Calls reply at once only when there is nothing to do.
enum DiskIO {
    /// Target errors become EIO, as a block device reports them; an unsupported operation
    /// stays EOPNOTSUPP so fallocate callers can tell.
    static func errno(for status: BioStatus) -> Int32 {
        status == .notSupported ? EOPNOTSUPP : EIO
    }

    /// Reads `count` bytes at `offset` (at most max_read, 1 MiB; short at the end).
    static func read(_ disk: ExposedDisk, _ handle: fuse_req_t?, count: Int, offset: Int) {
        let size = disk.byteSize
        guard offset < size, count > 0 else {
            fuse_reply_buf(handle, nil, 0)
            return
        }
        let length = min(count, size - offset, 1 << 20)
        let (first, end) = covering(offset, length)
        // On a ring, a whole-sector read goes straight into the entry's payload, where the
        // reply is taken from: no pool buffer, no copy.
        let request: FuseRequest
        if first == offset, end == offset + length, let payload = RingQueue.ofThisThread?.lendPayload() {
            request = disk.queue.pool.take(borrowing: payload)
        } else {
            request = disk.queue.pool.take(bytes: end - first)
        }
        request.prepare(handle, disk: disk, reply: .data(offset: offset - first, count: length))
        request.add(.init(op: .read, sector: UInt64(first >> 9), sectors: UInt64((end - first) >> 9), bufferOffset: 0))
        disk.queue.submit(request)
    }

    /// Writes `count` bytes from `data` (libfuse's buffer, copied before this returns).
    static func write(_ disk: ExposedDisk, _ handle: fuse_req_t?, data: UnsafeRawPointer, count: Int, offset: Int,
                      flags: BioFlags) {
        let size = disk.byteSize
        guard count > 0 else {
            fuse_reply_write(handle, 0)
            return
        }
        guard offset < size else {
            fuse_reply_err(handle, ENOSPC)
            return
        }
        let length = min(count, size - offset)
        let (first, end) = covering(offset, length)
        let span = end - first
        let aligned = first == offset && end == offset + length
        // On a ring, a whole-sector write is written from the entry's payload, where its data
        // already is. Otherwise a partial-sector write keeps a sector of scratch per edge
        // behind the covering sectors.
        let request: FuseRequest
        if aligned, let payload = RingQueue.ofThisThread?.lendPayload(), UnsafeRawPointer(payload) == data {
            request = disk.queue.pool.take(borrowing: payload)
        } else {
            request = disk.queue.pool.take(bytes: aligned ? span : span + 2 * sectorSize)
        }
        request.prepare(handle, disk: disk, reply: .written(length))
        let buffer = request.buffer!
        if UnsafeRawPointer(buffer + (offset - first)) != data {
            (buffer + (offset - first)).copyMemory(from: data, byteCount: length)
        }
        if !aligned {
            let head = offset - first
            if head > 0 {
                request.add(.init(op: .read, sector: UInt64(first >> 9), sectors: 1, bufferOffset: span,
                                  patchCount: head, patchSource: span, patchDestination: 0))
            }
            let tail = end - (offset + length)
            if tail > 0 {
                let scratch = span + sectorSize
                request.add(.init(op: .read, sector: UInt64((end - sectorSize) >> 9), sectors: 1, bufferOffset: scratch,
                                  patchCount: tail, patchSource: scratch + sectorSize - tail, patchDestination: span - tail))
            }
        }
        request.add(.init(op: .write, sector: UInt64(first >> 9), sectors: UInt64(span >> 9), bufferOffset: 0, flags: flags))
        disk.queue.submit(request)
    }

    /// Zeroes a byte range: whole sectors with one `op` bio (discard or write-zeroes), partial
    /// edge sectors by read-modify-write.
    static func zero(_ disk: ExposedDisk, _ handle: fuse_req_t?, offset: Int, count: Int, op: BioOp) {
        let size = disk.byteSize
        guard offset < size, count > 0 else {
            fuse_reply_err(handle, 0)
            return
        }
        let end = min(offset + count, size)
        let firstWhole = (offset + sectorSize - 1) & ~(sectorSize - 1)
        let lastWhole = end & ~(sectorSize - 1)
        let request = disk.queue.pool.take(bytes: 4 * sectorSize)
        request.prepare(handle, disk: disk, reply: .done)
        if firstWhole >= lastWhole {
            addZeroPatch(request, offset..<end, bufferOffset: 0)
        } else {
            if offset < firstWhole { addZeroPatch(request, offset..<firstWhole, bufferOffset: 0) }
            if lastWhole < end { addZeroPatch(request, lastWhole..<end, bufferOffset: 2 * sectorSize) }
            request.add(.init(op: op, sector: UInt64(firstWhole >> 9), sectors: UInt64((lastWhole - firstWhole) >> 9)))
        }
        disk.queue.submit(request)
    }

    /// Makes everything written so far durable (fsync).
    static func flush(_ disk: ExposedDisk, _ handle: fuse_req_t?) {
        let request = disk.queue.pool.take(bytes: 0)
        request.prepare(handle, disk: disk, reply: .done)
        request.add(.init(op: .flush))
        disk.queue.submit(request)
    }

    /// Whether a punched range must become write-zeroes: a discard is only safe where every
    /// target guarantees that discarded sectors read back as zeros.
    static func punchOp(_ disk: ExposedDisk, offset: Int, count: Int) -> BioOp {
        guard let table = disk.device.live else { return .writeZeroes }
        return table.discardZeroes(sector: UInt64(offset >> 9), count: UInt64((count + sectorSize - 1) >> 9))
            ? .discard : .writeZeroes
    }

    /// The sector-aligned byte range [first, end) that covers [offset, offset + count).
    private static func covering(_ offset: Int, _ count: Int) -> (Int, Int) {
        (offset & ~(sectorSize - 1), (offset + count + sectorSize - 1) & ~(sectorSize - 1))
    }

    /// Read-modify-write of the (at most two) sectors covering `range`, zeroing `range`, in the
    /// buffer at `bufferOffset`.
    private static func addZeroPatch(_ request: FuseRequest, _ range: Range<Int>, bufferOffset: Int) {
        let (first, end) = covering(range.lowerBound, range.count)
        let sector = UInt64(first >> 9)
        let sectors = UInt64((end - first) >> 9)
        request.add(.init(op: .read, sector: sector, sectors: sectors, bufferOffset: bufferOffset,
                          patchCount: range.count, patchDestination: bufferOffset + range.lowerBound - first))
        request.add(.init(op: .write, sector: sector, sectors: sectors, bufferOffset: bufferOffset))
    }
}
