import Glibc
import UDMCore

/// A per-thread, 4 KiB-aligned buffer for direct I/O from unaligned memory, and a source of
/// zeros. One per thread that does I/O, made on first use and kept for the thread's life.
final class BounceBuffer {
    static let size = 1 << 20
    private let memory: UnsafeMutableRawPointer

    private init() {
        memory = UnsafeMutableRawPointer.allocate(byteCount: BounceBuffer.size, alignment: 4096)
    }

    deinit { memory.deallocate() }

    /// Copies through the aligned buffer in pieces of at most `size` bytes.
    func transfer(write: Bool, fd: Int32, buffer: UnsafeMutableRawPointer, count: Int, offset: Int) -> Int {
        var done = 0
        while done < count {
            let piece = min(BounceBuffer.size, count - done)
            if write { memory.copyMemory(from: buffer + done, byteCount: piece) }
            let result = SystemCall.transfer(write: write, fd: fd, buffer: memory, count: piece, offset: offset + done)
            if result < 0 { return result }
            if !write { (buffer + done).copyMemory(from: memory, byteCount: piece) }
            done += piece
        }
        return 0
    }

    /// A run whose buffers are not all aligned, through the aligned buffer in one call:
    /// gathered before a write, scattered after a read. The run fits (`maxRunBytes`).
    func transfer(_ run: BioRun, write: Bool, fd: Int32) -> Int {
        precondition(run.bytes <= BounceBuffer.size, "run larger than the bounce buffer")
        if write {
            var at = memory
            for bio in run {
                at.copyMemory(from: bio.buffer!, byteCount: bio.byteCount)
                at += bio.byteCount
            }
        }
        let offset = Int(run.sector << sectorShift)
        let result = SystemCall.transfer(write: write, fd: fd, buffer: memory, count: run.bytes, offset: offset)
        if result == 0 && !write {
            var at = memory
            for bio in run {
                bio.buffer!.copyMemory(from: at, byteCount: bio.byteCount)
                at += bio.byteCount
            }
        }
        return result
    }

    func writeZeros(fd: Int32, count: Int, offset: Int) -> Int {
        memory.initializeMemory(as: UInt8.self, repeating: 0, count: BounceBuffer.size)
        var done = 0
        while done < count {
            let piece = min(BounceBuffer.size, count - done)
            let result = SystemCall.transfer(write: true, fd: fd, buffer: memory, count: piece, offset: offset + done)
            if result < 0 { return result }
            done += piece
        }
        return 0
    }

    private static let local = ThreadLocal { BounceBuffer() }

    static var current: BounceBuffer { local.value }
}
