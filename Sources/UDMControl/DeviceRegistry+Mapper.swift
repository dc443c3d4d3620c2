import Foundation
import Glibc

/// Disks created through dmsetup are block devices: a loop device over MOUNT/NAME (direct I/O)
/// and a node MAPPER-DIR/NAME for it. Loop devices are attached and detached with the registry
/// lock released: the kernel opens and closes MOUNT/NAME through this daemon's FUSE server.
extension DeviceRegistry {
    /// `dmsetup create`: the disk and its block device, or neither.
    public func createMapped(_ name: String, table text: String, source: String?) throws {
        try create(name, table: text, source: source)
        do {
            let node = try MapperNode.create(name: name, file: fuse.path(of: name), directory: config.mapperDirectory)
            try locked {
                mappers[name] = node
                try save()
            }
        } catch {
            try? remove(name, force: true)
            throw error
        }
    }

    /// At restore: the block device again; returns a line for the log if that failed.
    func attachRestoredMapper(_ name: String) -> [String] {
        do {
            let node = try MapperNode.create(name: name, file: fuse.path(of: name), directory: config.mapperDirectory)
            locked { mappers[name] = node }
            return []
        } catch {
            return ["\(name): restored, but not its block device: \(error)"]
        }
    }

    /// `dmsetup remove`: refused as dm refuses it while the block device is open (mounted,
    /// or held by any process); else the loop device goes, then the disk.
    public func removeMapped(_ name: String, force: Bool) throws {
        let node = try locked { () throws -> MapperNode? in
            _ = try record(name)
            try checkIdle(name)
            // What udm's own remove refuses (users, snapshots) it refuses before the loop goes.
            guard users(of: name).isEmpty, groups[name] == nil else { return nil }
            return mappers[name]
        }
        guard let node else { return try remove(name, force: force) }
        let openers = LoopDevice.openCount(major: LoopDevice.major, minor: node.loop.minor, except: config.mountPoint)
        if openers > 0 || node.loop.isClaimed || fuse.openCount(name: name) > 1 {
            throw ControlError("device-mapper: remove ioctl on \(name)  failed: Device or resource busy")
        }
        try node.remove()
        // The kernel closes MOUNT/NAME once the loop lets go; wait for that release (bounded).
        for _ in 0..<100 where fuse.openCount(name: name) > 0 { usleep(50_000) }
        do {
            try remove(name, force: force)
            locked { mappers[name] = nil }
        } catch {
            // Someone opened the device between the check and the detach: the disk stays, and
            // so does its block device.
            let again = try? MapperNode.create(name: name, file: fuse.path(of: name), directory: config.mapperDirectory)
            try? locked {
                mappers[name] = again
                try save()
            }
            throw error
        }
    }

    /// `dmsetup suspend`: with `lockfs`, a file system mounted from the block device is
    /// frozen first (its dirty data written through the loop device), as dm does.
    public func suspend(_ name: String, lockfs: Bool) throws {
        let (node, suspended) = try locked {
            try checkIdle(name)
            return (mappers[name], try record(name).device.isSuspended)
        }
        let frozen = lockfs && !suspended ? try node?.freeze() : nil
        do {
            try suspend(name)
        } catch {
            var thawing = node
            thawing?.frozen = frozen
            thawing?.thaw()
            throw error
        }
        if let frozen { locked { mappers[name]?.frozen = frozen } }
    }

    /// `dmsetup resume`: then drops the block device's cached buffers if no file system
    /// holds it, so the next mount reads what the new table gives, not what the kernel cached
    /// under the old one; and thaws what suspend froze.
    public func resumeMapped(_ name: String) throws {
        try resume(name)
        let node = locked { () -> MapperNode? in
            let node = mappers[name]
            mappers[name]?.frozen = nil
            return node
        }
        guard let node else { return }
        if !node.loop.isClaimed { node.loop.flushBuffers() }
        node.thaw()
    }

    /// For `udm info`: each disk's block device, its numbers, openers and read-ahead.
    public func addMapperInfo(_ infos: [Reports.Info]) -> [Reports.Info] {
        let nodes = locked { mappers }
        return infos.map { info in
            guard let node = nodes[info.name] else { return info }
            var info = info
            info.blockDevice = node.path
            info.major = LoopDevice.major
            info.minor = node.loop.minor
            info.blockOpenCount = LoopDevice.openCount(major: LoopDevice.major, minor: node.loop.minor, except: config.mountPoint)
            info.readAhead = node.loop.readAhead
            return info
        }
    }

    /// At shutdown: the block devices go (a restarted daemon makes them again). Refused while
    /// one is open, unless `force`, which leaves the open ones attached. Nothing is detached
    /// when another disk's file is open and the shutdown will be refused for that.
    func detachMappersForShutdown(force: Bool) throws {
        let nodes = locked { mappers }
        let otherOpen = openDisks().contains { nodes[$0.name] == nil || $0.handles > 1 }
        if otherOpen && !force { return }
        let busy = nodes.filter { name, node in
            node.loop.isClaimed || fuse.openCount(name: name) > 1
                || LoopDevice.openCount(major: LoopDevice.major, minor: node.loop.minor, except: config.mountPoint) > 0
        }.keys.sorted()
        if !busy.isEmpty && !force {
            throw ControlError("refused: block device\(busy.count == 1 ? "" : "s") \(busy.map { nodes[$0]!.path }.joined(separator: ", ")) \(busy.count == 1 ? "is" : "are") open; unmount or close \(busy.count == 1 ? "it" : "them") first, or `udm shutdown --force`")
        }
        for (name, node) in nodes where !busy.contains(name) {
            try? node.remove()
            for _ in 0..<100 where fuse.openCount(name: name) > 0 { usleep(50_000) }
        }
    }
}
