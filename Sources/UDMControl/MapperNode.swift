import CLinux
import Foundation
import Glibc

/// The block device a disk created through dmsetup presents: DIR/NAME (default
/// /dev/mapper/NAME), a block node with the major:minor of the loop device attached to the
/// disk's file.
public struct MapperNode: Sendable {
    public let path: String
    public let loop: LoopDevice
    /// Where the file system on it was frozen by a suspend, until resume thaws it.
    var frozen: String?

    /// Attaches `file` to a loop device and makes the node `directory/name` for it.
    static func create(name: String, file: String, directory: String) throws -> MapperNode {
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw ControlError("cannot create directory \(directory): \((error as NSError).localizedDescription)")
        }
        let path = directory + "/" + name
        releaseStale(path: path, file: file)
        let loop = try LoopDevice.attach(file: file)
        unlink(path)
        guard mknod(path, S_IFBLK | 0o660, LoopDevice.makeDevice(major: LoopDevice.major, minor: loop.minor)) == 0 else {
            let reason = errorText()
            try? loop.detach()
            throw ControlError("cannot make block device \(path): \(reason)")
        }
        return MapperNode(path: path, loop: loop)
    }

    /// A node left by a daemon killed with -9 names a loop device still attached to the dead
    /// mount's file (which the kernel then shows as /NAME, its mount being detached): detach
    /// it if nothing holds it, so it is not leaked.
    private static func releaseStale(path: String, file: String) {
        var info = stat()
        guard lstat(path, &info) == 0, info.st_mode & S_IFMT == S_IFBLK else { return }
        let (major, minor) = LoopDevice.split(info.st_rdev)
        guard let loop = LoopDevice(major: major, minor: minor), let backing = loop.backingFile,
              backing == file || backing == "/" + (file as NSString).lastPathComponent, !loop.isClaimed else { return }
        try? loop.detach()
    }

    /// Detaches the loop device and deletes the node.
    func remove() throws {
        try loop.detach()
        unlink(path)
    }

    /// Freezes the file system mounted from this device (FIFREEZE), as dm's suspend does
    /// unless --nolockfs; returns where, or nil if nothing is mounted.
    func freeze() throws -> String? {
        guard let mountPoint = LoopDevice.mountPoints(major: LoopDevice.major, minor: loop.minor).first else { return nil }
        let fd = open(mountPoint, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw ControlError("cannot open \(mountPoint) to freeze it: \(errorText())") }
        defer { close(fd) }
        guard ioctl(fd, udm_fifreeze, 0) == 0 else {
            // Frozen already by someone else (fsfreeze): dm goes on with the suspend, as here.
            if errno == EBUSY { return nil }
            throw ControlError("cannot freeze \(mountPoint): \(errorText())")
        }
        return mountPoint
    }

    /// Thaws what `freeze` froze.
    func thaw() {
        guard let frozen else { return }
        let fd = open(frozen, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { return }
        _ = ioctl(fd, udm_fithaw, 0)
        close(fd)
    }
}
