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
    /// Its FUSE requests: how many may be in the disk at once, and the rest, waiting.
    let queue: DiskQueue

    init(name: String, inode: UInt64, device: MappedDevice, queue: DiskQueue) {
        self.name = name
        self.inode = inode
        self.device = device
        self.queue = queue
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
    /// Where every disk's requests come from, and how many each may have in flight.
    let requests: RequestPool
    let queueDepth: Int
    /// The io_uring transport, when requests come over FUSE rings (the device hooks find it here).
    let ring: UringTransport?

    init(requests: RequestPool, queueDepth: Int, ring: UringTransport?) {
        self.requests = requests
        self.queueDepth = queueDepth
        self.ring = ring
    }

    func add(name: String, device: MappedDevice) {
        let queue = DiskQueue(pool: requests, depth: queueDepth)
        let replaced: ExposedDisk? = entries.withLock {
            let disk = ExposedDisk(name: name, inode: $0.nextInode, device: device, queue: queue)
            $0.nextInode += 1
            let old = $0.byName[name]
            if let old { $0.byInode[old.inode] = nil }
            $0.byName[name] = disk
            $0.byInode[disk.inode] = disk
            return old
        }
        replaced?.queue.close()
    }

    /// Takes the disk out of the directory; requests still waiting for it fail with EIO.
    func remove(name: String) {
        let disk: ExposedDisk? = entries.withLock {
            guard let disk = $0.byName.removeValue(forKey: name) else { return nil }
            $0.byInode[disk.inode] = nil
            return disk
        }
        disk?.queue.close()
    }

    func disk(inode: UInt64) -> ExposedDisk? { entries.withLock { $0.byInode[inode] } }
    func disk(name: String) -> ExposedDisk? { entries.withLock { $0.byName[name] } }
    var all: [ExposedDisk] { entries.withLock { $0.byName.values.sorted { $0.name < $1.name } } }
}
