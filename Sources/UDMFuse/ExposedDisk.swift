import Glibc
import Synchronization
import UDMCore

/// A mapped device as the FUSE mount shows it: the regular file MOUNT/NAME.
final class ExposedDisk: Sendable {
    let name: String
    let inode: UInt64
    let device: MappedDevice
    /// Open file handles on the exposed file (`udm remove` refuses while any are open).
    let openCount = Atomic<Int>(0)
    /// Serialises the read-modify-write of writes that do not cover whole sectors.
    let partialSectorLock = Mutex<Void>(())

    init(name: String, inode: UInt64, device: MappedDevice) {
        self.name = name
        self.inode = inode
        self.device = device
    }

    var byteSize: Int { Int(device.sectors) << 9 }
}

/// The mount's directory: disks by inode and by name. Inode numbers are never reused, so a
/// handle the kernel still holds for a removed disk can never reach a new one.
final class DiskDirectory: Sendable {
    private struct Entries {
        var byInode: [UInt64: ExposedDisk] = [:]
        var byName: [String: ExposedDisk] = [:]
        var nextInode: UInt64 = 2
    }

    private let entries = Mutex(Entries())
    /// Shown as every file's times.
    let mountTime = time(nil)

    func add(name: String, device: MappedDevice) {
        entries.withLock {
            let disk = ExposedDisk(name: name, inode: $0.nextInode, device: device)
            $0.nextInode += 1
            if let old = $0.byName[name] { $0.byInode[old.inode] = nil }
            $0.byName[name] = disk
            $0.byInode[disk.inode] = disk
        }
    }

    @discardableResult
    func remove(name: String) -> ExposedDisk? {
        entries.withLock {
            guard let disk = $0.byName.removeValue(forKey: name) else { return nil }
            $0.byInode[disk.inode] = nil
            return disk
        }
    }

    func disk(inode: UInt64) -> ExposedDisk? { entries.withLock { $0.byInode[inode] } }
    func disk(name: String) -> ExposedDisk? { entries.withLock { $0.byName[name] } }
    var all: [ExposedDisk] { entries.withLock { $0.byName.values.sorted { $0.name < $1.name } } }
}
