import CLinux
import Glibc
import UDMCore

/// A `BlockDevice` over an image file or a host block device: the bottom of every stack.
///
/// I/O runs synchronously on the submitting thread, straight between the bio's buffer and the
/// file: read = pread, write = pwrite (PREFLUSH adds an fdatasync before, FUA one after), a
/// run of adjacent reads or writes from the plug = one preadv/pwritev, flush = fdatasync,
/// discard = punch hole, write-zeroes = zero range (with a fallback to writing zeros).
///
/// With direct I/O (the default where the file accepts O_DIRECT) the host page cache is
/// bypassed: the data is not cached twice (once under the image, once above the loop device),
/// memory stays bounded under load, and a flush only has to flush the disk's cache. A buffer
/// that is not 512-byte aligned (libfuse's write buffer) is bounced through an aligned
/// per-thread buffer; if the host device wants larger alignment the I/O falls back to a
/// buffered descriptor of the same file, which the kernel keeps coherent with the direct one.
public final class ImageFile: BlockDevice, AsyncTransferOwner, @unchecked Sendable {
    public enum DirectIO: String, Sendable, CaseIterable {
        /// O_DIRECT if the file accepts it, else buffered.
        case auto
        case on
        case off
    }

    public let name: String
    public let sectors: UInt64
    public let isBlockDevice: Bool
    public let usesDirectIO: Bool
    private let fd: Int32
    private let bufferedFD: Int32

    public var discardZeroes: Bool { true }

    public init(path: String, directIO: DirectIO = .auto) throws {
        name = path
        var info = stat()
        guard stat(path, &info) == 0 else { throw SystemCallError("stat \(path)", errno: errno) }
        let kind = info.st_mode & S_IFMT
        guard kind == S_IFREG || kind == S_IFBLK else {
            throw SystemCallError("\(path) is neither a regular file nor a block device", errno: EINVAL)
        }
        isBlockDevice = kind == S_IFBLK
        bufferedFD = open(path, O_RDWR | O_CLOEXEC)
        guard bufferedFD >= 0 else { throw SystemCallError("open \(path)", errno: errno) }
        var direct: Int32 = -1
        if directIO != .off {
            direct = open(path, O_RDWR | O_CLOEXEC | udm_o_direct)
            if direct < 0 && directIO == .on {
                let error = errno
                close(bufferedFD)
                throw SystemCallError("open \(path) with O_DIRECT", errno: error)
            }
        }
        usesDirectIO = direct >= 0
        fd = usesDirectIO ? direct : bufferedFD
        let bytes = lseek(bufferedFD, 0, SEEK_END)
        guard bytes >= 0 else {
            let error = errno
            close(bufferedFD)
            if usesDirectIO { close(fd) }
            throw SystemCallError("size of \(path)", errno: error)
        }
        sectors = UInt64(bytes) >> sectorShift
    }

    deinit {
        if fd != bufferedFD { close(fd) }
        close(bufferedFD)
    }

    public func submitBio(_ bio: Bio) {
        let result: Int
        let offset = Int(bio.sector) << 9
        switch bio.op {
        case .read, .write:
            // A plain aligned direct transfer may go to the thread's engine (a FUSE ring).
            if usesDirectIO, bio.flags.isEmpty, let buffer = bio.buffer, Int(bitPattern: buffer) & 511 == 0,
               let engine = AsyncTransfer.current,
               engine.startTransfer(write: bio.op == .write, fd: fd, buffer: buffer, count: bio.byteCount,
                                    offset: offset, bio: bio, owner: self) {
                return
            }
            // PREFLUSH: what was written before must be durable before this write's data.
            if bio.flags.contains(.preflush) {
                let flushed = SystemCall.retrying { Int(fdatasync(fd)) }
                guard flushed == 0 else {
                    bio.end(BioStatus(errno: Int32(-flushed)))
                    return
                }
            }
            result = transfer(bio, offset: offset)
        case .flush:
            result = SystemCall.retrying { Int(fdatasync(fd)) }
        case .discard:
            result = zeroRange(offset: offset, count: bio.byteCount,
                               mode: udm_falloc_punch_hole | udm_falloc_keep_size)
        case .writeZeroes:
            result = zeroRange(offset: offset, count: bio.byteCount,
                               mode: udm_falloc_zero_range | udm_falloc_keep_size)
        }
        bio.end(result < 0 ? BioStatus(errno: Int32(-result)) : .ok)
    }

    /// An engine's transfer ended: done, or redone synchronously when it failed or fell short
    /// (the end of the file, an alignment the device refuses), which sorts out those cases.
    public func transferEnded(_ bio: Bio, result: Int) {
        if result == bio.byteCount {
            bio.end(.ok)
        } else {
            let redone = transfer(bio, offset: Int(bio.sector) << 9)
            bio.end(redone < 0 ? BioStatus(errno: Int32(-redone)) : .ok)
        }
    }

    /// Writes zeros over the first `bytes` of an open file, so the file system allocates every
    /// block now (a thick image, like an LV), and makes them durable. Returns 0 or -errno.
    public static func fillWithZeros(fd: Int32, bytes: Int) -> Int {
        let result = BounceBuffer.current.writeZeros(fd: fd, count: bytes, offset: 0)
        return result == 0 ? SystemCall.retrying { Int(fdatasync(fd)) } : result
    }

    /// Runs of adjacent pieces are gathered up to what the bounce buffer holds.
    public var maxRunBytes: Int { BounceBuffer.size }

    /// A run of adjacent reads or writes as one preadv/pwritev (or one bounced transfer). If
    /// that fails or falls short, the run is redone bio by bio, so each bio ends with its own
    /// status and a read past the end of the file gets its zeros.
    public func submitRun(_ run: BioRun) {
        guard run.count > 1 else {
            submitBio(run.first)
            return
        }
        if run.flags.contains(.preflush) {
            let flushed = SystemCall.retrying { Int(fdatasync(fd)) }
            guard flushed == 0 else {
                for bio in run { bio.end(BioStatus(errno: Int32(-flushed))) }
                return
            }
        }
        var result = transfer(run)
        if result == 0 && run.op == .write && run.flags.contains(.fua) {
            result = SystemCall.retrying { Int(fdatasync(fd)) }
        }
        for bio in run {
            let status = result == 0 ? 0 : transfer(bio, offset: Int(bio.sector) << 9)
            bio.end(status < 0 ? BioStatus(errno: Int32(-status)) : .ok)
        }
    }

    private func transfer(_ run: BioRun) -> Int {
        let write = run.op == .write
        guard usesDirectIO else { return VectoredIO.current.transfer(run, write: write, fd: fd) }
        if run.allSatisfy({ Int(bitPattern: $0.buffer) & 511 == 0 }) {
            return VectoredIO.current.transfer(run, write: write, fd: fd)
        }
        return BounceBuffer.current.transfer(run, write: write, fd: fd)
    }

    private func transfer(_ bio: Bio, offset: Int) -> Int {
        guard let buffer = bio.buffer else { return -Int(EINVAL) }
        let write = bio.op == .write
        let count = bio.byteCount
        var result: Int
        if usesDirectIO {
            if Int(bitPattern: buffer) & 511 == 0 {
                result = SystemCall.transfer(write: write, fd: fd, buffer: buffer, count: count, offset: offset)
            } else {
                result = BounceBuffer.current.transfer(write: write, fd: fd, buffer: buffer, count: count, offset: offset)
            }
            if result == -Int(EINVAL) {
                result = SystemCall.transfer(write: write, fd: bufferedFD, buffer: buffer, count: count, offset: offset)
            }
        } else {
            result = SystemCall.transfer(write: write, fd: fd, buffer: buffer, count: count, offset: offset)
        }
        if result == 0 && write && bio.flags.contains(.fua) {
            result = SystemCall.retrying { Int(fdatasync(fd)) }
        }
        return result
    }

    /// Discards or zeroes a range; where the file system or device cannot, writes zeros.
    private func zeroRange(offset: Int, count: Int, mode: Int32) -> Int {
        let result = SystemCall.retrying { Int(fallocate(bufferedFD, mode, off_t(offset), off_t(count))) }
        guard result == -Int(EOPNOTSUPP) || result == -Int(EINVAL) else { return result }
        return BounceBuffer.current.writeZeros(fd: bufferedFD, count: count, offset: offset)
    }
}
