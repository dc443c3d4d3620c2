import Foundation
import Glibc
import UDMBackends
import UDMCore

/// Snapshots the LVM way (lvcreate -s, lvremove): the origin's table moves to a hidden
/// `ORIGIN-real` disk, the origin becomes `snapshot-origin` over it, and each snapshot is a
/// `snapshot` disk over the same real disk and its own COW file.
extension DeviceRegistry {
    /// The disk a `MOUNT/NAME` argument names, if it is one.
    func diskName(_ argument: String) -> String? {
        let prefix = mountPoint.hasSuffix("/") ? mountPoint : mountPoint + "/"
        return argument.hasPrefix(prefix) ? String(argument.dropFirst(prefix.count)) : nil
    }

    func path(of disk: String) -> String {
        (mountPoint.hasSuffix("/") ? mountPoint : mountPoint + "/") + disk
    }

    /// The target types of a disk's live table.
    func targetTypes(of name: String) -> Set<String> {
        Set(records[name]?.device.live?.entries.map { type(of: $0.target).name } ?? [])
    }

    /// Why ORIGIN cannot be snapshotted, if it cannot.
    private func snapshotRefusal(of origin: String) -> String? {
        if let owner = self.origin(ofSnapshot: origin) {
            return "'\(origin)' is a snapshot of '\(owner)'; snapshots of snapshots are not supported"
        }
        if let owner = self.origin(ofReal: origin) {
            return "'\(origin)' holds the data of '\(owner)' under its snapshots; snapshot '\(owner)' instead"
        }
        if let merge = groups[origin]?.merging {
            return "'\(origin)' is merging '\(merge.snapshot)'; wait for the merge to finish"
        }
        if groups[origin] == nil, !targetTypes(of: origin).isDisjoint(with: ["snapshot", "snapshot-origin", "snapshot-merge"]) {
            return "'\(origin)' has a snapshot table of its own making; snapshot a disk with a plain table"
        }
        return nil
    }

    /// Suspends ORIGIN (holding its I/O), moves its table to ORIGIN-real if this is its first
    /// snapshot, creates the snapshot disk, and resumes ORIGIN as snapshot-origin. On failure
    /// everything is put back as it was.
    public func createSnapshot(_ snapshot: String, _ request: ControlRequest.SnapshotOptions) throws {
        let origin = request.origin
        // The table ORIGIN-real will take if this is the first snapshot.
        let realTable = try locked { () throws -> String? in
            try Self.validate(name: snapshot)
            let originRecord = try record(origin)
            try checkIdle(origin)
            guard records[snapshot] == nil else { throw ControlError("disk '\(snapshot)' already exists") }
            if let refusal = snapshotRefusal(of: origin) { throw ControlError(refusal) }
            return groups[origin] == nil ? originRecord.live : nil
        }
        guard request.cow.hasPrefix("/") || NbdURI(request.cow) != nil else {
            throw ControlError("--cow must be an absolute path or an NBD URI: \(request.cow)")
        }
        guard request.chunkSize & (request.chunkSize &- 1) == 0, request.chunkSize <= 1 << 21 else {
            throw ControlError("--chunk-size \(request.chunkSize): a power of two up to 2097152 sectors")
        }
        let cowIdentities = try inspectCow(request)
        let realNbd = connectNbd(realTable ?? "")
        let snapshotNbd = NbdConnections(connecting: NbdURI(request.cow) != nil ? [request.cow] : [], timeout: config.nbdTimeout)
        defer { closeUnused(realNbd, snapshotNbd) }
        let (device, real, first) = try locked { () throws -> (MappedDevice, String, Bool) in
            // Again: things may have changed while the COW was read.
            try Self.validate(name: snapshot)
            let originRecord = try record(origin)
            guard records[snapshot] == nil else { throw ControlError("disk '\(snapshot)' already exists") }
            if let refusal = snapshotRefusal(of: origin) { throw ControlError(refusal) }
            if let user = cowIdentities.lazy.compactMap({ self.user(of: $0) }).first {
                throw ControlError("COW \(request.cow) is in use by disk '\(user)'")
            }
            let real = groups[origin]?.real ?? "\(origin)-real"
            let first = groups[origin] == nil
            if first, records[real] != nil { throw ControlError("disk '\(real)' already exists") }
            guard let table = originRecord.live else { throw ControlError("'\(origin)' has no live table") }
            if first, table != realTable {
                throw ControlError("'\(origin)' changed while snapshot create connected to its NBD exports; try again")
            }
            try claim([origin, snapshot, real], for: "snapshot create")
            do {
                if first {
                    try insertDisk(real, table: table, source: "\(origin)'s table", nbd: realNbd)
                    try save()
                }
            } catch {
                if first { _ = dropDisk(real) }
                release([origin, snapshot, real])
                throw error
            }
            return (originRecord.device, real, first)
        }
        defer { locked { release([origin, snapshot, real]) } }
        var createdCow = false
        var loaded = false
        var created = false
        do {
            createdCow = try makeCowFile(request, originSectors: device.sectors)
            device.suspend()
            try locked {
                if first {
                    try loadTable(origin, table: "0 \(device.sectors) snapshot-origin \(path(of: real))", source: "origin table",
                                  nbd: NbdConnections())
                    loaded = true
                }
                let store = request.transient ? "N" : request.overflow ? "PO" : "P"
                // A transient store has no header to take a chunk size from: 0 means the default.
                let chunk = request.transient ? request.effectiveChunkSize : request.chunkSize
                try insertDisk(snapshot, table: "0 \(device.sectors) snapshot \(path(of: real)) \(request.cow) \(store) \(chunk)",
                               source: "snapshot table", nbd: snapshotNbd)
                created = true
                groups[origin, default: SnapshotGroup(real: real, snapshots: [])].snapshots.append(snapshot)
                try save()
            }
            try resumeClaimed(origin, device)
        } catch {
            let dropped = locked { () -> MappedDevice? in
                let dropped = created ? dropDisk(snapshot) : nil
                groups[origin]?.snapshots.removeAll { $0 == snapshot }
                if loaded { clearTable(origin) }
                return dropped
            }
            dropped?.failHeldIO()
            try? device.resume()
            locked {
                if first {
                    groups[origin] = nil
                    _ = dropDisk(real)
                }
                try? save()
            }
            if createdCow { unlink(request.cow) }
            throw error
        }
    }

    /// Creates the COW file if it does not exist (sparse, or written with zeros if asked: either
    /// way a fresh store); returns whether it did.
    private func makeCowFile(_ request: ControlRequest.SnapshotOptions, originSectors: UInt64) throws -> Bool {
        // An NBD export is made by its server; it is used as it is.
        if NbdURI(request.cow) != nil || FileManager.default.fileExists(atPath: request.cow) { return false }
        let chunk = request.effectiveChunkSize
        let bytes: UInt64
        if let size = request.size {
            bytes = size
        } else {
            // Room for every origin chunk, their metadata areas and the header (dmtest's formula).
            let chunks = (originSectors + chunk - 1) / chunk
            let perArea = chunk * 512 / 16
            let areas = (chunks + 1 + perArea - 1) / perArea
            bytes = (chunk + (areas + chunks) * chunk) * 512
        }
        guard bytes >= 3 * chunk * 512 else {
            throw ControlError("--size \(bytes) is too small: a COW store with chunk size \(chunk) needs at least \(3 * chunk * 512) bytes")
        }
        let fd = open(request.cow, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw ControlError("cannot create COW file \(request.cow): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        guard ftruncate(fd, off_t(bytes)) == 0 else {
            let error = errno
            unlink(request.cow)
            throw ControlError("cannot size COW file \(request.cow): \(String(cString: strerror(error)))")
        }
        if request.preallocate == true {
            let result = ImageFile.fillWithZeros(fd: fd, bytes: Int(bytes))
            guard result == 0 else {
                unlink(request.cow)
                throw ControlError("cannot preallocate COW file \(request.cow): \(String(cString: strerror(Int32(-result))))")
            }
        }
        return true
    }

    /// Removes a snapshot disk; when it was the origin's last, reloads the origin with its real
    /// table and removes ORIGIN-real. The COW file stays.
    public func removeSnapshot(_ name: String, force: Bool) throws {
        let (origin, device, originDevice, real, isOpen, last, realTable) = try locked {
            () throws -> (String, MappedDevice, MappedDevice, String, Bool, Bool, String?) in
            guard let origin = self.origin(ofSnapshot: name), let group = groups[origin] else {
                _ = try record(name)
                throw ControlError("'\(name)' is not a snapshot")
            }
            let device = try record(name).device
            let originDevice = try record(origin).device
            let users = users(of: name)
            guard users.isEmpty else {
                throw ControlError("disk '\(name)' is in use by \(users.joined(separator: ", "))")
            }
            let openCount = fuse.openCount(name: name)
            if openCount > 0 && !force {
                throw ControlError("snapshot '\(name)' is open (\(openCount) handle\(openCount == 1 ? "" : "s")); close it or use --force")
            }
            let last = group.snapshots == [name] && group.merging == nil
            try claim([origin, name] + (last ? [group.real] : []), for: "snapshot remove")
            return (origin, device, originDevice, group.real, openCount > 0, last, last ? records[group.real]?.live : nil)
        }
        defer { locked { release([origin, name] + (last ? [real] : [])) } }
        // ORIGIN-real is claimed: its table stays what it was read as.
        let realNbd = connectNbd(realTable ?? "")
        defer { closeUnused(realNbd) }
        originDevice.suspend()
        do {
            if isOpen { try failAllIO(name, device) }
            try locked {
                _ = dropDisk(name)
                groups[origin]?.snapshots.removeAll { $0 == name }
                if let realTable {
                    try loadTable(origin, table: realTable, source: "\(real)'s table", nbd: realNbd)
                }
                try save()
            }
        } catch {
            try? originDevice.resume()
            throw error
        }
        try resumeClaimed(origin, originDevice)
        let realDevice = try locked { () throws -> MappedDevice? in
            guard last else { return nil }
            groups[origin] = nil
            let realDevice = dropDisk(real)
            try save()
            return realDevice
        }
        device.failHeldIO()
        realDevice?.failHeldIO()
    }

    /// One line per snapshot: origin, snapshot, chunk size, use %, state.
    public func listSnapshots() -> String {
        locked {
            var rows = [["ORIGIN", "SNAPSHOT", "CHUNK", "USE%", "STATE"]]
            let originOf = Dictionary(groups.flatMap { group in group.value.snapshots.map { ($0, group.key) } },
                                      uniquingKeysWith: { first, _ in first })
            for name in order {
                guard let origin = originOf[name], let target = records[name]?.device.live?.entries.first?.target else { continue }
                let status = target.status(.info)
                let table = target.status(.table).split(separator: " ")
                let chunk = table.count == 4 ? String(table[3]) : "-"
                var use = "-"
                var state = status
                let parts = status.split(separator: " ").first?.split(separator: "/") ?? []
                if parts.count == 2, let allocated = Double(parts[0]), let total = Double(parts[1]), total > 0 {
                    use = String(format: "%.2f", allocated / total * 100)
                    state = table.count == 4 && table[2].uppercased() == "N" ? "active (transient)" : "active"
                }
                rows.append([origin, name, chunk, use, state])
            }
            for name in order {
                guard let merge = groups[name]?.merging,
                      let target = records[name]?.device.live?.entries.first?.target else { continue }
                let status = target.status(.info)
                let chunk = target.status(.table).split(separator: " ").last.map(String.init) ?? "-"
                let state: String
                if let usage = Self.parseUsage(status) {
                    let left = Double(usage.allocated - min(usage.metadata, usage.allocated)) * 512 / 1_048_576
                    state = String(format: "merging into %@, %.1f MiB left", name, left)
                } else {
                    state = status
                }
                rows.append([name, "(\((merge.cow as NSString).lastPathComponent))", chunk, "-", state])
            }
            for name in lostSnapshots {
                rows.append(["?", name, "-", "-", "lost: transient, gone with the previous daemon"])
            }
            let widths = (0..<5).map { column in rows.map { $0[column].count }.max()! }
            return rows.map { row in
                row.enumerated().map { $0.offset == 4 ? $0.element : $0.element.padding(toLength: widths[$0.offset], withPad: " ", startingAt: 0) }
                    .joined(separator: "  ")
            }.joined(separator: "\n")
        }
    }
}
