import Foundation
import UDMCore

/// The snapshot topology as the registry's own data, saved with the disks: which origin sits
/// on which ORIGIN-real disk, its snapshots, and the snapshot being merged into it. Commands
/// ask these questions of the data, never of table text.
struct SnapshotGroup: Codable, Equatable, Sendable {
    /// The disk holding the origin's own table, under the origin and every snapshot.
    var real: String
    /// Snapshot disks, oldest first.
    var snapshots: [String]
    /// The snapshot being merged back (its disk is gone; its COW is in the origin's table).
    var merging: Merge?

    struct Merge: Codable, Equatable, Sendable {
        var snapshot: String
        var cow: String
    }
}

extension DeviceRegistry {
    /// The origin whose snapshot `name` is.
    func origin(ofSnapshot name: String) -> String? {
        groups.first { $0.value.snapshots.contains(name) }?.key
    }

    /// The origin whose real disk `name` is.
    func origin(ofReal name: String) -> String? {
        groups.first { $0.value.real == name }?.key
    }

    /// Why `name`'s table must not be replaced by hand, if it is part of a snapshot group.
    func topologyRole(of name: String) -> String? {
        if let group = groups[name] {
            if let merge = group.merging { return "'\(name)' is merging '\(merge.snapshot)'" }
            return "'\(name)' has snapshots \(group.snapshots.joined(separator: " "))"
        }
        if let origin = origin(ofSnapshot: name) { return "'\(name)' is a snapshot of '\(origin)'" }
        if let origin = origin(ofReal: name) { return "'\(name)' holds the data of '\(origin)' under its snapshots" }
        return nil
    }
}

extension DeviceRegistry {
    /// State saved before groups were kept has none: read them once from the restored tables
    /// (an origin is snapshot-origin or snapshot-merge over MOUNT/REAL; its snapshots are the
    /// snapshot disks over the same REAL). With the lock held.
    func adoptGroupsFromTables() {
        func line(_ name: String) -> TableLine? {
            guard let text = records[name]?.live, let lines = try? TableLine.parse(text), lines.count == 1 else { return nil }
            return lines[0]
        }
        for origin in order {
            guard let top = line(origin), ["snapshot-origin", "snapshot-merge"].contains(top.type),
                  let first = top.arguments.first, let real = diskName(first) else { continue }
            let snapshots = order.filter { line($0).map { $0.type == "snapshot" && $0.arguments.first == first } ?? false }
            let merging = top.type == "snapshot-merge" && top.arguments.count > 1
                ? SnapshotGroup.Merge(snapshot: (top.arguments[1] as NSString).lastPathComponent, cow: top.arguments[1]) : nil
            groups[origin] = SnapshotGroup(real: real, snapshots: snapshots, merging: merging)
        }
    }
}
