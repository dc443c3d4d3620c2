import Foundation
import Glibc

/// How dmsetup-style device arguments reach a path the resolver can open: `major:minor`
/// names a block device by number, and a loop device over a udm disk's file is that disk.
enum DeviceArgument {
    /// For `major:minor`, the device node's path (from sysfs, so no /dev/block is needed);
    /// nil for any other argument.
    static func path(forNumber argument: String) throws -> String? {
        let parts = argument.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, let major = UInt32(parts[0]), let minor = UInt32(parts[1]) else { return nil }
        let uevent = (try? String(contentsOfFile: "/sys/dev/block/\(major):\(minor)/uevent", encoding: .utf8)) ?? ""
        guard let line = uevent.split(separator: "\n").first(where: { $0.hasPrefix("DEVNAME=") }) else {
            throw ControlError("'\(argument)' is not a block device: the kernel has no block device \(major):\(minor)")
        }
        let path = "/dev/" + line.dropFirst("DEVNAME=".count)
        var info = stat()
        guard stat(path, &info) == 0, info.st_mode & S_IFMT == S_IFBLK,
              LoopDevice.split(info.st_rdev) == (Int(major), Int(minor)) else {
            throw ControlError("'\(argument)' is block device \(path), which has no device node with that number")
        }
        return path
    }

    /// The udm disk a loop device at `path` is attached to, if its backing file is on the udm
    /// mount (`prefix` is MOUNT/). Opening the loop itself would send the table's I/O through
    /// the kernel back into this daemon, so the disk is stacked on in-process instead; a loop
    /// that maps only part of the disk's file (offset, size limit) is refused.
    static func udmDisk(behind path: String, mountPrefix prefix: String) throws -> String? {
        var info = stat()
        guard stat(path, &info) == 0, info.st_mode & S_IFMT == S_IFBLK else { return nil }
        let (major, minor) = LoopDevice.split(info.st_rdev)
        guard let loop = LoopDevice(major: major, minor: minor), let file = loop.backingFile,
              file.hasPrefix(prefix) else { return nil }
        let disk = String(file.dropFirst(prefix.count))
        guard loop.mapsWholeFile else {
            throw ControlError("'\(path)' is a loop device over part of udm disk \(disk): its I/O would loop through the kernel back into the daemon; name the disk as \(file)")
        }
        return disk
    }
}
