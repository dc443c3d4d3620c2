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
