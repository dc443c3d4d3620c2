import Foundation
import Glibc
import UDMControl

/// dmsetup's reports over the daemon's disks, in dmsetup's text: devices sorted by name,
/// device arguments of tables shown as `major:minor` where they are block devices (a udm disk
/// with a block device shows that device's numbers; image files stay paths), `info` blocks
/// and `info -c` columns as dmsetup prints them.
struct DmsetupReports {
    let client: Dmsetup

    enum Kind { case table, status }

    /// `name\t(major:minor)`; a disk made by `udm create` (no block device) shows its file.
    func list() {
        let disks = sorted(client.disks())
        guard !disks.isEmpty else { return print("No devices found") }
        for disk in disks {
            let numbers = disk.major.map { "\($0):\(disk.minor ?? 0)" } ?? disk.file
            print("\(disk.name)\t(\(numbers))")
        }
    }

    func lines(_ kind: Kind, names: [String]) {
        let infos = client.disks()
        let files = Dictionary(infos.compactMap { info in info.major.map { (info.file, "\($0):\(info.minor ?? 0)") } },
                               uniquingKeysWith: { first, _ in first })
        let wanted = names.isEmpty ? sorted(infos).map(\.name) : names
        if wanted.isEmpty { return print("No devices found") }
        let verb: ControlRequest.Verb = kind == .table ? .table : .status
        for name in wanted {
            let output = client.ask(ControlRequest(verb: verb, name: name, json: true), verb: verb.rawValue, name: name)
            guard let decoded = try? JSONDecoder().decode([String: [Reports.Lines]].self, from: Data(output.utf8)),
                  let disk = decoded["disks"]?.first else { dmsetupFail("the daemon sent a \(verb.rawValue) answer udm cannot read") }
            for line in disk.lines where client.options.target.map({ $0 == line.target }) ?? true {
                let params = kind == .table ? Self.deviceNumbers(line.params, files: files) : line.params
                print((names.isEmpty ? "\(name): " : "") + "\(line.start) \(line.length) \(line.target) \(params)")
            }
        }
    }

    /// Each word that names a block device becomes `major:minor`, as the kernel prints a table.
    static func deviceNumbers(_ params: String, files: [String: String]) -> String {
        params.split(separator: " ", omittingEmptySubsequences: false).map { word in
            let word = String(word)
            guard word.hasPrefix("/") else { return word }
            if let numbers = files[word] { return numbers }
            var info = stat()
            guard stat(word, &info) == 0, info.st_mode & S_IFMT == S_IFBLK else { return word }
            let device = UInt64(info.st_rdev)
            return "\((device >> 8) & 0xFFF | (device >> 32) & 0xFFFF_F000):\(device & 0xFF | (device >> 12) & 0xFFFF_FF00)"
        }.joined(separator: " ")
    }

    func info(names: [String]) {
        let infos = names.isEmpty ? sorted(client.disks()) : names.map(client.info)
        if infos.isEmpty { return print("No devices found") }
        if client.options.columns { return columns(infos) }
        for info in infos {
            var lines = [
                "Name:              \(info.name)",
                "State:             \(info.state)",
                "Read Ahead:        \(info.readAhead ?? 256)",
                "Tables present:    \(tables(info))",
                "Open count:        \(openCount(info))",
                // udm counts no dm events (a snapshot's invalidation shows in its status).
                "Event number:      0",
            ]
            if let major = info.major {
                lines.append("Major, minor:      \(major), \(info.minor ?? 0)")
            } else {
                lines.append("File:              \(info.file)")
            }
            lines.append("Number of targets: \(info.targets)")
            print(lines.joined(separator: "\n") + "\n")
        }
    }

    private func tables(_ info: Reports.Info) -> String {
        let present = [info.liveTable ? "LIVE" : nil, info.inactiveTable ? "INACTIVE" : nil].compactMap { $0 }
        return present.isEmpty ? "None" : present.joined(separator: " & ")
    }

    private func openCount(_ info: Reports.Info) -> Int { info.blockOpenCount ?? info.openCount }

    private struct Column {
        let heading: String
        let width: Int
        let numeric: Bool
        let value: (Reports.Info) -> String
    }

    private func column(_ field: String) -> Column {
        switch field {
        case "name": return Column(heading: "Name", width: 16, numeric: false) { $0.name }
        case "major": return Column(heading: "Maj", width: 3, numeric: true) { $0.major.map(String.init) ?? "-1" }
        case "minor": return Column(heading: "Min", width: 3, numeric: true) { $0.minor.map(String.init) ?? "-1" }
        case "attr":
            return Column(heading: "Stat", width: 4, numeric: false) { info in
                (info.liveTable ? "L" : "-") + (info.inactiveTable ? "I" : "-") + (info.state == "SUSPENDED" ? "s" : "-") + "w"
            }
        case "open": return Column(heading: "Open", width: 4, numeric: true) { String(openCount($0)) }
        case "segments": return Column(heading: "Targ", width: 4, numeric: true) { String($0.targets) }
        case "events": return Column(heading: "Event", width: 6, numeric: true) { _ in "0" }
        case "uuid": return Column(heading: "UUID", width: 32, numeric: false) { _ in "" }
        case "suspended":
            return Column(heading: "Suspended", width: 9, numeric: false) { $0.state == "SUSPENDED" ? "Suspended" : "Active" }
        case "tables_loaded":
            return Column(heading: "Tables", width: 6, numeric: false) { info in
                switch (info.liveTable, info.inactiveTable) {
                case (true, true): "Both"
                case (true, false): "Live"
                case (false, true): "Inactive"
                case (false, false): "None"
                }
            }
        case "readahead": return Column(heading: "RAhead", width: 6, numeric: true) { String($0.readAhead ?? 256) }
        case "blkdevname":
            return Column(heading: "BlkDevName", width: 16, numeric: false) { info in info.minor.map { "loop\($0)" } ?? "" }
        default:
            dmsetupFail("unrecognised field '\(field)' (udm knows name, major, minor, attr, open, segments, events, uuid, suspended, tables_loaded, readahead, blkdevname)")
        }
    }

    /// `info -c`: aligned columns under headings; with --noheadings or --separator, values
    /// joined by the separator (":" by default then), unaligned, as dmsetup does.
    private func columns(_ infos: [Reports.Info]) {
        let fields = (client.options.fields ?? "name,major,minor,attr,open,segments,events,uuid")
            .split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        let chosen = fields.map(column)
        let rows = infos.map { info in chosen.map { $0.value(info) } }
        if client.options.noHeadings || client.options.separator != nil {
            let separator = client.options.separator ?? ":"
            if !client.options.noHeadings { print(chosen.map(\.heading).joined(separator: separator)) }
            rows.forEach { print($0.joined(separator: separator)) }
            return
        }
        let widths = chosen.indices.map { index in
            max(chosen[index].width, chosen[index].heading.count, rows.map { $0[index].count }.max() ?? 0)
        }
        func pad(_ text: String, _ width: Int, right: Bool) -> String {
            let padding = String(repeating: " ", count: max(0, width - text.count))
            return right ? padding + text : text + padding
        }
        print(chosen.indices.map { pad(chosen[$0].heading, widths[$0], right: false) }.joined(separator: " "))
        for row in rows {
            print(chosen.indices.map { pad(row[$0], widths[$0], right: chosen[$0].numeric) }.joined(separator: " "))
        }
    }

    /// Makes each block device node that is missing or names another device.
    func makeNodes(names: [String]) {
        let infos = names.isEmpty ? client.disks() : names.map(client.info)
        for info in infos {
            guard let path = info.blockDevice, let major = info.major, let minor = info.minor else { continue }
            let wanted = LoopDevice.makeDevice(major: major, minor: minor)
            var existing = stat()
            if lstat(path, &existing) == 0, existing.st_mode & S_IFMT == S_IFBLK, existing.st_rdev == wanted { continue }
            unlink(path)
            try? FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent,
                                                     withIntermediateDirectories: true)
            guard mknod(path, S_IFBLK | 0o660, wanted) == 0 else {
                dmsetupFail("cannot make block device \(path): \(String(cString: strerror(errno)))")
            }
        }
    }

    private func sorted(_ infos: [Reports.Info]) -> [Reports.Info] { infos.sorted { $0.name < $1.name } }
}
