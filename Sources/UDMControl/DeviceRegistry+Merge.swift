import Foundation
import UDMCore
import UDMTargets

/// Merging a snapshot back into its origin, the way `lvconvert --merge` does: the snapshot
/// disk goes away, the origin becomes snapshot-merge over ORIGIN-real and the snapshot's COW,
/// and when the merge target reports the merge done the origin is put back on snapshot-origin
/// (if other snapshots remain) or on its own table. The merge state lives in the COW file and
/// in the saved snapshot group, so a restarted daemon goes on with it.
extension DeviceRegistry {
    /// Starts merging `snapshot`; returns the origin's name. Refused while the origin or the
    /// snapshot is open: a file system mounted on the origin would not see its blocks change
    /// under it (LVM defers the merge instead; udm refuses).
    public func mergeSnapshot(_ snapshot: String) throws -> String {
        let (origin, device, arguments) = try locked { () throws -> (String, MappedDevice, [String]) in
            guard let origin = self.origin(ofSnapshot: snapshot), let group = groups[origin] else {
                _ = try record(snapshot)
                throw ControlError("'\(snapshot)' is not a snapshot")
            }
            if let merge = group.merging {
                throw ControlError("'\(origin)' is already merging '\(merge.snapshot)'; wait for it to finish")
            }
            let arguments = records[snapshot]?.device.live?.entries.first?.target.status(.table)
                .split(separator: " ").map(String.init) ?? []
            guard arguments.count == 4 else { throw ControlError("'\(snapshot)' has no snapshot table to merge") }
            guard arguments[2].uppercased() != "N" else {
                throw ControlError("'\(snapshot)' is transient (N); only a persistent snapshot can be merged")
            }
            let users = users(of: snapshot)
            guard users.isEmpty else {
                throw ControlError("disk '\(snapshot)' is in use by \(users.joined(separator: ", "))")
            }
            try refuseOpen(merging: snapshot, into: origin)
            try claim([origin, snapshot], for: "snapshot merge")
            return (origin, try record(origin).device, arguments)
        }
        defer { locked { release([origin, snapshot]) } }
        let mergeTable = "0 \(device.sectors) snapshot-merge \(arguments[0]) \(arguments[1]) P \(arguments[3])"
        let mergeNbd = connectNbd(mergeTable)
        defer { closeUnused(mergeNbd) }
        device.suspend()
        do {
            try locked {
                // Opened while the origin's I/O drained?
                try refuseOpen(merging: snapshot, into: origin)
                guard let snapshotTable = records[snapshot]?.live else { throw ControlError("'\(snapshot)' has no live table") }
                // The snapshot's target must be gone before the merge target takes over its COW.
                _ = dropDisk(snapshot)
                do {
                    try loadTable(origin, table: mergeTable, source: "merge table", nbd: mergeNbd)
                } catch {
                    // The COW is intact: put the snapshot disk back as it was. The merge table
                    // that failed names the same COW, and kept none of its connections.
                    try? insertDisk(snapshot, table: snapshotTable, source: "snapshot table", nbd: mergeNbd)
                    throw error
                }
                groups[origin]?.snapshots.removeAll { $0 == snapshot }
                groups[origin]?.merging = SnapshotGroup.Merge(snapshot: snapshot, cow: arguments[1])
                try save()
            }
        } catch {
            try? device.resume()
            throw error
        }
        try resumeClaimed(origin, device)
        watchMerge(origin)
        return origin
    }

    private func refuseOpen(merging snapshot: String, into origin: String) throws {
        for disk in [origin, snapshot] {
            let count = fuse.openCount(name: disk)
            guard count == 0 else {
                throw ControlError("cannot merge '\(snapshot)' while '\(disk)' is open (\(count) handle\(count == 1 ? "" : "s")): unmount it, detach its loop device or close the file first")
            }
        }
    }

    /// Has `origin`'s merge target report when the merge is done; the finish then runs on the
    /// registry's own queue, never on the target's thread or under its locks.
    func watchMerge(_ origin: String) {
        let target = locked { records[origin]?.device.live?.entries.first?.target as? SnapshotMergeTarget }
        target?.whenMerged { [self] in mergeFinisher.async { [self] in finishMerge(origin) } }
    }

    /// Puts an origin whose merge is done back on its own table (or on snapshot-origin while
    /// other snapshots remain) and removes ORIGIN-real when no snapshot needs it.
    func finishMerge(_ origin: String) {
        enum Next { case done, retry, finish(MappedDevice, SnapshotGroup, String) }
        let next = locked { () -> Next in
            guard let group = groups[origin], group.merging != nil, let device = records[origin]?.device,
                  let target = device.live?.entries.first?.target as? SnapshotMergeTarget,
                  let usage = Self.parseUsage(target.status(.info)), usage.allocated == usage.metadata else { return .done }
            let others = !group.snapshots.isEmpty
            // Without a table there is nothing to go back to: the origin stays merging.
            guard let table = others ? "0 \(device.sectors) snapshot-origin \(path(of: group.real))" : records[group.real]?.live else {
                return .done
            }
            // Another command is working on the origin: come back once it is through.
            guard (try? claim([origin, group.real], for: "merge finish")) != nil else { return .retry }
            return .finish(device, group, table)
        }
        guard case .finish(let device, let group, let table) = next else {
            if case .retry = next { mergeFinisher.asyncAfter(deadline: .now() + 0.2) { [self] in finishMerge(origin) } }
            return
        }
        defer { locked { release([origin, group.real]) } }
        let others = !group.snapshots.isEmpty
        // Both disks are claimed, so `table` is still theirs once the exports are connected.
        let nbd = connectNbd(table)
        defer { closeUnused(nbd) }
        device.suspend()
        do {
            try locked {
                try loadTable(origin, table: table, source: others ? "origin table" : "\(group.real)'s table", nbd: nbd)
                try save()
            }
            try resumeClaimed(origin, device)
        } catch {
            try? device.resume()
            return
        }
        let realDevice = locked { () -> MappedDevice? in
            var realDevice: MappedDevice?
            if others {
                groups[origin]?.merging = nil
            } else {
                groups[origin] = nil
                realDevice = dropDisk(group.real)
            }
            try? save()
            return realDevice
        }
        realDevice?.failHeldIO()
    }

    struct Usage {
        let allocated: UInt64
        let total: UInt64
        let metadata: UInt64
    }

    /// `<allocated>/<total> <metadata>` of a snapshot status line.
    static func parseUsage(_ status: String) -> Usage? {
        let parts = status.split(whereSeparator: { $0 == "/" || $0 == " " }).compactMap { UInt64($0) }
        guard parts.count == 3 else { return nil }
        return Usage(allocated: parts[0], total: parts[1], metadata: parts[2])
    }
}
