import Glibc
import UDMCore

/// Byte-addressed file I/O on a disk, turned into sector bios the way a block device would
/// take them: I/O past the end is short (reads) or ENOSPC (writes); a write that does not
/// cover whole sectors reads the edge sectors, patches them and writes them back.
enum DiskIO {
    /// Target errors become EIO, as a block device reports them; an unsupported operation
    /// stays EOPNOTSUPP so fallocate callers can tell.
    static func errno(for status: BioStatus) -> Int32 {
        status == .notSupported ? EOPNOTSUPP : EIO
    }

    /// Reads `count` bytes at `offset` into the worker buffer; returns where they start and
    /// how many there are (0 at or past the end), or an errno.
    static func read(_ disk: ExposedDisk, count: Int, offset: Int) -> Result<(UnsafeMutableRawPointer, Int), BioStatus> {
        let context = WorkerContext.current
        let size = disk.byteSize
        guard offset < size, count > 0 else { return .success((context.buffer, 0)) }
        let length = min(count, size - offset, (1 << 20))
        let first = offset & ~(sectorSize - 1)
        let end = (offset + length + sectorSize - 1) & ~(sectorSize - 1)
        let status = context.run(.read, on: disk.device, sector: UInt64(first >> 9),
                                 sectors: UInt64((end - first) >> 9), buffer: context.buffer)
        guard status.isOK else { return .failure(status) }
        return .success((context.buffer + (offset - first), length))
    }

    /// Writes `count` bytes from `data` at `offset`; returns how many were written.
    static func write(_ disk: ExposedDisk, data: UnsafeRawPointer, count: Int, offset: Int, flags: BioFlags = []) -> Result<Int, Errno> {
        let size = disk.byteSize
        guard count > 0 else { return .success(0) }
        guard offset < size else { return .failure(Errno(ENOSPC)) }
        let length = min(count, size - offset)
        let context = WorkerContext.current
        let status: BioStatus
        if offset & (sectorSize - 1) == 0 && length & (sectorSize - 1) == 0 {
            status = context.run(.write, on: disk.device, sector: UInt64(offset >> 9), sectors: UInt64(length >> 9),
                                 buffer: UnsafeMutableRawPointer(mutating: data), flags: flags)
        } else {
            status = patch(disk, offset: offset, count: length, flags: flags) { $0.copyMemory(from: data, byteCount: length) }
        }
        return status.isOK ? .success(length) : .failure(Errno(errno(for: status)))
    }

    /// Zeroes a byte range: whole sectors with one discard or write-zeroes bio, partial edge
    /// sectors by read-modify-write.
    static func zero(_ disk: ExposedDisk, offset: Int, count: Int, op: BioOp) -> Int32 {
        let size = disk.byteSize
        guard offset < size, count > 0 else { return 0 }
        let end = min(offset + count, size)
        let firstWhole = (offset + sectorSize - 1) & ~(sectorSize - 1)
        let lastWhole = end & ~(sectorSize - 1)
        if firstWhole >= lastWhole {
            let status = patch(disk, offset: offset, count: end - offset) { $0.initializeMemory(as: UInt8.self, repeating: 0, count: end - offset) }
            return status.isOK ? 0 : errno(for: status)
        }
        if offset < firstWhole {
            let status = patch(disk, offset: offset, count: firstWhole - offset) { $0.initializeMemory(as: UInt8.self, repeating: 0, count: firstWhole - offset) }
            if !status.isOK { return errno(for: status) }
        }
        if lastWhole < end {
            let status = patch(disk, offset: lastWhole, count: end - lastWhole) { $0.initializeMemory(as: UInt8.self, repeating: 0, count: end - lastWhole) }
            if !status.isOK { return errno(for: status) }
        }
        let status = WorkerContext.current.run(op, on: disk.device, sector: UInt64(firstWhole >> 9),
                                               sectors: UInt64((lastWhole - firstWhole) >> 9))
        return status.isOK ? 0 : errno(for: status)
    }

    /// Whether a punched range must become write-zeroes: a discard is only safe where every
    /// target guarantees that discarded sectors read back as zeros.
    static func punchOp(_ disk: ExposedDisk, offset: Int, count: Int) -> BioOp {
        guard let table = disk.device.live else { return .writeZeroes }
        return table.discardZeroes(sector: UInt64(offset >> 9), count: UInt64((count + sectorSize - 1) >> 9))
            ? .discard : .writeZeroes
    }

    /// Read-modify-write of the sectors covering [offset, offset+count): read them into the
    /// worker buffer, let `change` edit the bytes at `offset`, write them back.
    private static func patch(_ disk: ExposedDisk, offset: Int, count: Int, flags: BioFlags = [],
                              change: (UnsafeMutableRawPointer) -> Void) -> BioStatus {
        let context = WorkerContext.current
        let first = offset & ~(sectorSize - 1)
        let end = (offset + count + sectorSize - 1) & ~(sectorSize - 1)
        let sector = UInt64(first >> 9)
        let sectors = UInt64((end - first) >> 9)
        return disk.partialSectorLock.withLock { _ in
            let read = context.run(.read, on: disk.device, sector: sector, sectors: sectors, buffer: context.buffer)
            guard read.isOK else { return read }
            change(context.buffer + (offset - first))
            return context.run(.write, on: disk.device, sector: sector, sectors: sectors, buffer: context.buffer, flags: flags)
        }
    }
}

/// An errno value to reply with.
struct Errno: Error {
    let code: Int32
    init(_ code: Int32) { self.code = code }
}
