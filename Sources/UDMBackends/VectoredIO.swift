import Glibc
import UDMCore

/// preadv/pwritev of a run of bios straight between their buffers and the file, through a
/// per-thread iovec array (no allocation per I/O).
final class VectoredIO {
    private let vectors: UnsafeMutablePointer<iovec>

    private init() {
        vectors = .allocate(capacity: BioRun.maxCount)
    }

    deinit { vectors.deallocate() }

    /// 0 if the whole run was transferred, else -errno (-EAGAIN for a short transfer: the
    /// caller redoes the run bio by bio, which handles the end of the file).
    func transfer(_ run: BioRun, write: Bool, fd: Int32) -> Int {
        guard run.count <= BioRun.maxCount else { return -Int(EAGAIN) }
        var index = 0
        for bio in run {
            vectors[index] = iovec(iov_base: bio.buffer, iov_len: bio.byteCount)
            index += 1
        }
        let offset = off_t(run.sector << sectorShift)
        let count = Int32(index)
        let done = SystemCall.retrying {
            write ? pwritev(fd, vectors, count, offset) : preadv(fd, vectors, count, offset)
        }
        if done < 0 { return done }
        return done == run.bytes ? 0 : -Int(EAGAIN)
    }

    private static let local = ThreadLocal { VectoredIO() }

    static var current: VectoredIO { local.value }
}
