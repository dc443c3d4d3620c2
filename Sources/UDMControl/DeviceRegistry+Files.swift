import Foundation
import Glibc
import UDMBackends
import UDMCore
import UDMExceptionStore

/// A file or block device by what it is, not by how a path spells it: device and inode of a
/// file, the device number of a block device node. Symlinks and `..` lead to the same identity.
struct FileIdentity: Hashable, Sendable {
    let device: UInt64
    let inode: UInt64

    init?(path: String) {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        if info.st_mode & S_IFMT == S_IFBLK {
            // Inode 0 is never a file's, so a device number never equals a file's identity.
            device = UInt64(info.st_rdev)
            inode = 0
        } else {
            device = UInt64(info.st_dev)
            inode = UInt64(info.st_ino)
        }
    }

    /// The file behind `path` if it is a loop device: a COW on /dev/loopN over a disk's image
    /// is that image.
    static func loopBackingFile(_ path: String) -> String? {
        var info = stat()
        guard stat(path, &info) == 0, info.st_mode & S_IFMT == S_IFBLK else { return nil }
        let rdev = UInt64(info.st_rdev)
        let major = (rdev >> 8) & 0xFFF | (rdev >> 32) & 0xFFFF_F000
        let minor = rdev & 0xFF | (rdev >> 12) & 0xFFFF_FF00
        let backing = try? String(contentsOfFile: "/sys/dev/block/\(major):\(minor)/loop/backing_file", encoding: .utf8)
        return backing.map { $0.trimmingCharacters(in: .newlines) }.flatMap { $0.isEmpty ? nil : $0 }
    }

    /// What `path` is, and for a loop device also the file behind it.
    static func identities(_ path: String) -> [FileIdentity] {
        [FileIdentity(path: path), loopBackingFile(path).flatMap { FileIdentity(path: $0) }].compactMap { $0 }
    }

    /// The device number of the file system mounted at `mountPoint`, read from
    /// /proc/self/mountinfo (a stat of the mount would ask our own FUSE server).
    static func mountDevice(_ mountPoint: String) -> UInt64? {
        let target = (mountPoint as NSString).standardizingPath
        let table = (try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? ""
        for line in table.split(separator: "\n") {
            let fields = line.split(separator: " ")
            guard fields.count > 4, fields[4] == target else { continue }
            let numbers = fields[2].split(separator: ":").compactMap { UInt64($0) }
            guard numbers.count == 2 else { continue }
            let (major, minor) = (numbers[0], numbers[1])
            // glibc's makedev.
            return (major & 0xFFFF_F000) << 32 | (major & 0xFFF) << 8 | (minor & 0xFFFF_FF00) << 12 | (minor & 0xFF)
        }
        return nil
    }

    /// Whether `path` (or, for a path that does not exist yet, its directory) is on the
    /// file system whose device is `mountDevice`.
    static func isOn(_ mountDevice: UInt64?, path: String) -> Bool {
        guard let mountDevice else { return false }
        var info = stat()
        if stat(path, &info) != 0, stat((path as NSString).deletingLastPathComponent, &info) != 0 { return false }
        return UInt64(info.st_dev) == mountDevice
    }
}

extension DeviceRegistry {
    /// Checks a COW named for `snapshot create`, before the registry lock is taken (the checks
    /// read the file, and may stat through the FUSE mount): not a udm disk, and not holding a
    /// snapshot store unless `reuseCow`. Returns its identities if it exists.
    func inspectCow(_ request: ControlRequest.SnapshotOptions) throws -> [FileIdentity] {
        let cow = request.cow
        let mountDevice = FileIdentity.mountDevice(mountPoint)
        if diskName(cow) != nil || FileIdentity.isOn(mountDevice, path: cow)
            || FileIdentity.loopBackingFile(cow).map({ FileIdentity.isOn(mountDevice, path: $0) }) == true {
            throw ControlError("COW \(cow) is a udm disk: a COW must be a file or device of its own")
        }
        let identities = FileIdentity.identities(cow)
        guard !identities.isEmpty else { return [] }
        if let user = locked({ identities.lazy.compactMap { self.user(of: $0) }.first }) {
            throw ControlError("COW \(cow) is in use by disk '\(user)'")
        }
        if request.size != nil {
            throw ControlError("COW file \(cow) already exists; leave out --size to use it as it is")
        }
        if request.preallocate == true {
            throw ControlError("COW file \(cow) already exists; --preallocate is for a new file")
        }
        if request.reuseCow != true, let held = try storedSnapshot(cow) {
            throw ControlError("COW \(cow) already holds a snapshot store (\(held)); use --reuse-cow to adopt it, or remove/zero the file to start empty")
        }
        return identities
    }

    /// What the snapshot store in `path` holds ("N exceptions", or that it is invalid), or nil
    /// if the file does not start with a snapshot header; a damaged store is refused.
    private func storedSnapshot(_ path: String) throws -> String? {
        guard let handle = FileHandle(forReadingAtPath: path) else { return nil }
        defer { try? handle.close() }
        guard let header = try? handle.read(upToCount: 4), header.count == 4,
              header.withUnsafeBytes({ UInt32(littleEndian: $0.loadUnaligned(as: UInt32.self)) }) == PersistentStore.magic
        else { return nil }
        var count = 0
        let valid: Bool
        do {
            let store = PersistentStore(cow: try ImageFile(path: path, directIO: config.directIO), chunkSize: 0)
            valid = try store.read { _, _ in count += 1 }
        } catch {
            throw ControlError("\(error)")
        }
        return valid ? "\(count) exception\(count == 1 ? "" : "s")" : "invalidated"
    }

    /// The disk other than `except` whose live or loaded table uses the file `identity`.
    func user(of identity: FileIdentity, except: String? = nil) -> String? {
        order.first { $0 != except && records[$0]?.files.contains(identity) == true }
    }

    /// A snapshot table's COW may be neither a udm disk nor a file another table uses (two
    /// writers of one store, or a store written over a disk's data).
    func checkCows(_ lines: [TableLine], for name: String) throws {
        for line in lines where ["snapshot", "snapshot-merge"].contains(line.type) && line.arguments.count >= 2 {
            let cow = line.arguments[1]
            let overMount = FileIdentity.loopBackingFile(cow).map { FileIdentity.isOn(FileIdentity.mountDevice(mountPoint), path: $0) }
            guard diskName(cow) == nil, overMount != true else {
                throw ControlError("COW \(cow) is a udm disk: a COW must be a file or device of its own")
            }
            let identities = FileIdentity.identities(cow)
            if let user = identities.lazy.compactMap({ self.user(of: $0, except: name) }).first {
                throw ControlError("COW \(cow) is in use by disk '\(user)'")
            }
            if diskName(line.arguments[0]) == nil, !Set(FileIdentity.identities(line.arguments[0])).isDisjoint(with: identities) {
                throw ControlError("COW \(cow) is the snapshot's origin")
            }
        }
    }
}
