import Foundation
import Glibc
import UDMBackends
import UDMCore

/// Snapshots the LVM way (lvcreate -s, lvremove): the origin's table moves to a hidden
/// `ORIGIN-real` disk, the origin becomes `snapshot-origin` over it, and each snapshot is a
/// `snapshot` disk over the same real disk and its own COW file.
extension DeviceRegistry {
    /// The single line of a disk's live table, if it is of `type`.
    func singleLine(of name: String, type: String) -> TableLine? {
        guard let text = records[name]?.live, let lines = try? TableLine.parse(text),
              lines.count == 1, lines[0].type == type else { return nil }
        return lines[0]
    }

    /// The disk a `MOUNT/NAME` argument names, if it is one.
    func diskName(_ argument: String) -> String? {
        let prefix = mountPoint.hasSuffix("/") ? mountPoint : mountPoint + "/"
        return argument.hasPrefix(prefix) ? String(argument.dropFirst(prefix.count)) : nil
    }

    func path(of disk: String) -> String {
        (mountPoint.hasSuffix("/") ? mountPoint : mountPoint + "/") + disk
    }

    /// Suspends ORIGIN (holding its I/O), moves its table to ORIGIN-real if this is its first
    /// snapshot, creates the snapshot disk, and resumes ORIGIN as snapshot-origin. On failure
    /// everything is put back as it was.
    public func createSnapshot(_ snapshot: String, _ request: ControlRequest.SnapshotOptions) throws {
        try locked {
            let origin = request.origin
            try Self.validate(name: snapshot)
            let originRecord = try record(origin)
            guard records[snapshot] == nil else { throw ControlError("disk '\(snapshot)' already exists") }
            guard singleLine(of: origin, type: "snapshot") == nil else {
                throw ControlError("'\(origin)' is a snapshot; snapshots of snapshots are not supported")
            }
            guard request.cow.hasPrefix("/") else { throw ControlError("--cow must be an absolute path: \(request.cow)") }
            guard request.chunkSize & (request.chunkSize &- 1) == 0, request.chunkSize <= 1 << 21 else {
                throw ControlError("--chunk-size \(request.chunkSize): a power of two up to 2097152 sectors")
            }
            let sectors = originRecord.device.sectors
            let existingReal = singleLine(of: origin, type: "snapshot-origin").flatMap { diskName($0.arguments[0]) }
            let real = existingReal ?? "\(origin)-real"
            if existingReal == nil, records[real] != nil { throw ControlError("disk '\(real)' already exists") }
            let createdCow = try makeCowFile(request, originSectors: sectors)
            var createdReal = false
            var loadedOrigin = false
            do {
                if existingReal == nil {
                    guard let table = originRecord.live else { throw ControlError("'\(origin)' has no live table") }
                    try create(real, table: table, source: "\(origin)'s table")
                    createdReal = true
                }
                try suspend(origin)
                if existingReal == nil {
                    try load(origin, table: "0 \(sectors) snapshot-origin \(path(of: real))", source: "origin table")
                    loadedOrigin = true
                }
                let store = request.transient ? "N" : request.overflow ? "PO" : "P"
                try create(snapshot, table: "0 \(sectors) snapshot \(path(of: real)) \(request.cow) \(store) \(request.chunkSize)",
                           source: "snapshot table")
                try resume(origin)
            } catch {
                if loadedOrigin { try? clear(origin) }
                try? resume(origin)
                if createdReal { try? remove(real, force: false) }
                if createdCow { unlink(request.cow) }
                throw error
            }
        }
    }

    /// Creates the COW file if it does not exist (sparse, or written with zeros if asked: either
    /// way a fresh store); returns whether it did.
    private func makeCowFile(_ request: ControlRequest.SnapshotOptions, originSectors: UInt64) throws -> Bool {
        if FileManager.default.fileExists(atPath: request.cow) {
            if request.size != nil {
                throw ControlError("COW file \(request.cow) already exists; leave out --size to use it as it is")
            }
            if request.preallocate == true {
                throw ControlError("COW file \(request.cow) already exists; --preallocate is for a new file")
            }
            return false
        }
        let chunk = request.chunkSize == 0 ? 32 : request.chunkSize
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
        try locked {
            guard let line = singleLine(of: name, type: "snapshot"), let real = diskName(line.arguments[0]) else {
                throw ControlError("'\(name)' is not a snapshot")
            }
            let origin = records.keys.sorted().first { singleLine(of: $0, type: "snapshot-origin")?.arguments[0] == path(of: real) }
            if let origin { try suspend(origin) }
            do {
                try remove(name, force: force)
            } catch {
                if let origin { try? resume(origin) }
                throw error
            }
            let others = records.keys.filter { singleLine(of: $0, type: "snapshot")?.arguments[0] == path(of: real) }
            guard let origin else { return }
            if others.isEmpty, let table = records[real]?.live {
                try load(origin, table: table, source: "\(real)'s table")
                try resume(origin)
                try remove(real, force: false)
            } else {
                try resume(origin)
            }
        }
    }

    /// One line per snapshot: origin, snapshot, chunk size, use %, state.
    public func listSnapshots() -> String {
        locked {
            var rows = [["ORIGIN", "SNAPSHOT", "CHUNK", "USE%", "STATE"]]
            for name in names() {
                guard let line = singleLine(of: name, type: "snapshot"), let real = diskName(line.arguments[0]) else { continue }
                let origin = records.keys.sorted().first { singleLine(of: $0, type: "snapshot-origin")?.arguments[0] == path(of: real) } ?? "?"
                let status = records[name]?.device.live?.entries.first?.target.status(.info) ?? ""
                let table = records[name]?.device.live?.entries.first?.target.status(.table).split(separator: " ") ?? []
                let chunk = table.count == 4 ? String(table[3]) : line.arguments[3]
                var use = "-"
                var state = status
                let parts = status.split(separator: " ").first?.split(separator: "/") ?? []
                if parts.count == 2, let allocated = Double(parts[0]), let total = Double(parts[1]), total > 0 {
                    use = String(format: "%.2f", allocated / total * 100)
                    state = line.arguments[2].uppercased() == "N" ? "active (transient)" : "active"
                }
                rows.append([origin, name, chunk, use, state])
            }
            for name in names() {
                guard let line = singleLine(of: name, type: "snapshot-merge"),
                      let status = records[name]?.device.live?.entries.first?.target.status(.info) else { continue }
                let cowFile = (line.arguments[1] as NSString).lastPathComponent
                let state: String
                if let usage = Self.parseUsage(status) {
                    let left = Double(usage.allocated - min(usage.metadata, usage.allocated)) * 512 / 1_048_576
                    state = String(format: "merging into %@, %.1f MiB left", name, left)
                } else {
                    state = status
                }
                rows.append([name, "(\(cowFile))", line.arguments[3], "-", state])
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
