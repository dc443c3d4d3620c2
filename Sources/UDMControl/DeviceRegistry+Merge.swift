import Foundation
import UDMCore

/// Merging a snapshot back into its origin, the way `lvconvert --merge` does: the snapshot
/// disk goes away, the origin becomes snapshot-merge over ORIGIN-real and the snapshot's COW,
/// and when the merge is done the origin is put back on snapshot-origin (if other snapshots
/// remain) or on its own table. The merge state lives in the COW file and in the saved
/// origin table, so a restarted daemon goes on with it.
extension DeviceRegistry {
    /// Starts merging `snapshot`; returns the origin's name.
    public func mergeSnapshot(_ snapshot: String) throws -> String {
        try locked {
            guard let line = singleLine(of: snapshot, type: "snapshot") else {
                throw ControlError("'\(snapshot)' is not a snapshot")
            }
            if let merging = names().first(where: { singleLine(of: $0, type: "snapshot-merge")?.arguments[0] == line.arguments[0] }) {
                throw ControlError("'\(merging)' is already merging a snapshot; wait for it to finish")
            }
            guard line.arguments[2].uppercased() != "N" else {
                throw ControlError("'\(snapshot)' is transient (N); only a persistent snapshot can be merged")
            }
            guard let origin = names().first(where: { singleLine(of: $0, type: "snapshot-origin")?.arguments[0] == line.arguments[0] }) else {
                throw ControlError("no origin found for snapshot '\(snapshot)'")
            }
            let sectors = try record(origin).device.sectors
            let chunk = records[snapshot]?.device.live?.entries.first?.target.status(.table).split(separator: " ").last.map(String.init)
                ?? line.arguments[3]
            try suspend(origin)
            do {
                try remove(snapshot, force: false)
            } catch {
                try? resume(origin)
                throw error
            }
            do {
                try load(origin, table: "0 \(sectors) snapshot-merge \(line.arguments[0]) \(line.arguments[1]) P \(chunk)",
                         source: "merge table")
                try resume(origin)
            } catch {
                // The snapshot disk is gone but its COW is intact: recreate it, keep the origin as it was.
                try? clear(origin)
                try? create(snapshot, table: "0 \(sectors) snapshot \(line.arguments.joined(separator: " "))",
                            source: "snapshot table")
                try? resume(origin)
                throw error
            }
            return origin
        }
    }

    /// Puts every origin whose merge has finished back on its own table (or on snapshot-origin
    /// while other snapshots remain). Run periodically by the daemon.
    func finishMerges() {
        locked {
            for origin in names() {
                guard let line = singleLine(of: origin, type: "snapshot-merge"), let real = diskName(line.arguments[0]),
                      let status = records[origin]?.device.live?.entries.first?.target.status(.info),
                      let usage = Self.parseUsage(status), usage.allocated == usage.metadata else { continue }
                let others = names().contains { singleLine(of: $0, type: "snapshot")?.arguments[0] == line.arguments[0] }
                do {
                    try suspend(origin)
                    if others {
                        let sectors = records[origin]?.device.sectors ?? 0
                        try load(origin, table: "0 \(sectors) snapshot-origin \(line.arguments[0])", source: "origin table")
                        try resume(origin)
                    } else if let table = records[real]?.live {
                        try load(origin, table: table, source: "\(real)'s table")
                        try resume(origin)
                        try remove(real, force: false)
                    }
                } catch {
                    try? resume(origin)
                }
            }
        }
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
