import CLinux
import Foundation
import Glibc

/// A kernel loop device: attached to a udm disk's file with direct I/O (so the loop keeps no
/// page cache of its own and a flush on it reaches the disk), detached, and asked who holds it.
public struct LoopDevice: Sendable, Equatable {
    public let number: Int
    public var path: String { "/dev/loop\(number)" }
    public static let major = 7
    /// Read-ahead of a new block device, in sectors: what libdevmapper gives a dm device.
    static let readAheadSectors: Int32 = 256
    public var minor: Int { number }

    public init(number: Int) { self.number = number }

    /// The loop device behind a block device number, if it is one.
    public init?(major: Int, minor: Int) {
        guard major == Self.major else { return nil }
        number = minor
    }

    /// Attaches `file` (opened read-write) to a free loop device with direct I/O in one
    /// LOOP_CONFIGURE; retries when another process takes the free device first.
    public static func attach(file: String) throws -> LoopDevice {
        let backing = open(file, O_RDWR | O_CLOEXEC)
        guard backing >= 0 else { throw ControlError("cannot open \(file) for a loop device: \(errorText())") }
        defer { close(backing) }
        let control = open("/dev/loop-control", O_RDWR | O_CLOEXEC)
        guard control >= 0 else { throw ControlError("cannot open /dev/loop-control: \(errorText())") }
        defer { close(control) }
        for _ in 0..<16 {
            let number = ioctl(control, UInt(LOOP_CTL_GET_FREE))
            guard number >= 0 else { throw ControlError("no free loop device: \(errorText())") }
            let loop = LoopDevice(number: Int(number))
            let fd = open(loop.path, O_RDWR | O_CLOEXEC)
            guard fd >= 0 else { throw ControlError("cannot open \(loop.path): \(errorText())") }
            var config = loop_config()
            config.fd = UInt32(backing)
            config.info.lo_flags = UInt32(LO_FLAGS_DIRECT_IO)
            let result = ioctl(fd, UInt(LOOP_CONFIGURE), &config)
            let reason = errno
            // dm's default read-ahead; a loop device keeps whatever its last user set.
            if result == 0 { _ = ioctl(fd, udm_blkraset, Self.readAheadSectors) }
            close(fd)
            if result == 0 { return loop }
            if reason == EBUSY { continue }
            throw ControlError("cannot attach \(file) to \(loop.path): \(String(cString: strerror(reason)))")
        }
        throw ControlError("cannot attach \(file) to a loop device: every free one was taken by others")
    }

    /// The file the loop device reads and writes, as the kernel recorded its path.
    public var backingFile: String? { Self.sysfs(number, "loop/backing_file") }

    /// Whether the loop maps its backing file from the start, whole (no offset, no size limit).
    public var mapsWholeFile: Bool {
        Self.sysfs(number, "loop/offset") == "0" && Self.sysfs(number, "loop/sizelimit") == "0"
    }

    /// Detaches the loop device; refused with EBUSY while anyone holds it exclusively (a
    /// mounted file system). The kernel lets go of the backing file on our close.
    public func detach() throws {
        let fd = open(path, O_RDONLY | O_EXCL | O_CLOEXEC)
        guard fd >= 0 else { throw ControlError("cannot detach \(path): \(errorText())") }
        defer { close(fd) }
        guard ioctl(fd, UInt(LOOP_CLR_FD)) == 0 || errno == ENXIO else {
            throw ControlError("cannot detach \(path): \(errorText())")
        }
    }

    /// Whether a file system (or another exclusive user) holds the device.
    public var isClaimed: Bool {
        let fd = open(path, O_RDONLY | O_EXCL | O_CLOEXEC)
        if fd >= 0 { close(fd) }
        return fd < 0 && errno == EBUSY
    }

    /// Openers of the block device `major:minor`, counted as dm counts them: a mounted file
    /// system once, and every open descriptor of any process but this one, whatever node it
    /// was opened by. Descriptors on the udm mount are not followed (a stat there would ask
    /// this daemon's own FUSE server).
    public static func openCount(major: Int, minor: Int, except mountPoint: String) -> Int {
        let wanted = makeDevice(major: major, minor: minor)
        // One per open file: a descriptor inherited through fork is the same open.
        var opens: [(pid: pid_t, fd: Int32)] = []
        let processes = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        for name in processes {
            guard let pid = pid_t(name), pid != getpid() else { continue }
            let directory = "/proc/\(pid)/fd"
            for entry in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] {
                guard let fd = Int32(entry),
                      let target = try? FileManager.default.destinationOfSymbolicLink(atPath: directory + "/" + entry),
                      target.hasPrefix("/"), !target.hasPrefix(mountPoint + "/") else { continue }
                var info = stat()
                guard stat(directory + "/" + entry, &info) == 0, info.st_mode & S_IFMT == S_IFBLK, info.st_rdev == wanted,
                      !opens.contains(where: { udm_same_open_file($0.pid, pid, $0.fd, fd) == 0 }) else { continue }
                opens.append((pid, fd))
            }
        }
        return opens.count + (mountPoints(major: major, minor: minor).isEmpty ? 0 : 1)
    }

    /// Where the block device `major:minor` is mounted, from /proc/self/mountinfo.
    public static func mountPoints(major: Int, minor: Int) -> [String] {
        let table = (try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? ""
        return table.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: " ")
            guard fields.count > 4, fields[2] == "\(major):\(minor)" else { return nil }
            // mountinfo escapes space, tab, newline and backslash as octal.
            return unescapeOctal(String(fields[4]))
        }
    }

    /// Writes the device's dirty buffers and drops its cached ones (BLKFLSBUF), so the next
    /// reader sees what the udm disk holds now, not what the kernel cached before a table change.
    public func flushBuffers() {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return }
        _ = ioctl(fd, udm_blkflsbuf)
        close(fd)
    }

    /// Read-ahead in sectors, as `blockdev --getra` shows it.
    public var readAhead: Int {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return 0 }
        defer { close(fd) }
        var sectors = 0
        return ioctl(fd, udm_blkraget, &sectors) == 0 ? sectors : 0
    }

    /// glibc's makedev.
    public static func makeDevice(major: Int, minor: Int) -> dev_t {
        let (major, minor) = (UInt64(major), UInt64(minor))
        return dev_t((major & 0xFFFF_F000) << 32 | (major & 0xFFF) << 8 | (minor & 0xFFFF_FF00) << 12 | (minor & 0xFF))
    }

    /// glibc's major and minor.
    public static func split(_ device: dev_t) -> (major: Int, minor: Int) {
        let device = UInt64(device)
        return (Int((device >> 8) & 0xFFF | (device >> 32) & 0xFFFF_F000), Int(device & 0xFF | (device >> 12) & 0xFFFF_FF00))
    }

    private static func sysfs(_ number: Int, _ attribute: String) -> String? {
        (try? String(contentsOfFile: "/sys/block/loop\(number)/\(attribute)", encoding: .utf8))
            .map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
    }

    private static func unescapeOctal(_ text: String) -> String {
        var bytes: [UInt8] = []
        var utf8 = Array(text.utf8)[...]
        while let byte = utf8.popFirst() {
            if byte == UInt8(ascii: "\\"), utf8.count >= 3, let value = UInt8(String(decoding: utf8.prefix(3), as: UTF8.self), radix: 8) {
                bytes.append(value)
                utf8 = utf8.dropFirst(3)
            } else {
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

func errorText() -> String { String(cString: strerror(errno)) }
