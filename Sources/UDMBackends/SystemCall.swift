import Glibc

/// A failed system call: what was being done, and errno (`pwrite /img/a.img at 4096: ENOSPC`).
public struct SystemCallError: Error, CustomStringConvertible, Sendable {
    public let what: String
    public let errno: Int32

    public init(_ what: String, errno: Int32) {
        self.what = what
        self.errno = errno
    }

    public var description: String { "\(what): \(String(cString: strerror(errno)))" }
}

/// Thin wrappers over the syscalls the backends use: retry on EINTR, report errno.
enum SystemCall {
    /// Runs `call` until it does not fail with EINTR; returns its result or -errno.
    @inline(__always)
    static func retrying(_ call: () -> Int) -> Int {
        while true {
            let result = call()
            if result >= 0 { return result }
            let error = Glibc.errno
            if error != EINTR { return -Int(error) }
        }
    }

    /// Reads or writes exactly `count` bytes at `offset`, looping over short transfers.
    /// Returns 0 or -errno; a read past the end of the file fills the rest with zeros.
    static func transfer(write: Bool, fd: Int32, buffer: UnsafeMutableRawPointer, count: Int, offset: Int) -> Int {
        var done = 0
        while done < count {
            let n = retrying {
                write ? pwrite(fd, buffer + done, count - done, off_t(offset + done))
                      : pread(fd, buffer + done, count - done, off_t(offset + done))
            }
            if n < 0 { return n }
            if n == 0 {
                if write { return -Int(EIO) }
                (buffer + done).initializeMemory(as: UInt8.self, repeating: 0, count: count - done)
                return 0
            }
            done += n
        }
        return 0
    }
}
