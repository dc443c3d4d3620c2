import Foundation
import UDMBackends
import UDMCore

/// What `udm ls`, `table`, `status`, `info`, `stats`, `snapshot list` and `targets` report, as
/// values: printed as text the way dmsetup prints it, or as one line of JSON (`--json`:
/// `{"disks": [...]}`, `{"snapshots": [...]}`, `{"targets": [...]}`, keyed by these field
/// names, which stay stable).
public enum Reports {
    public struct Disk: Codable, Sendable {
        public var name: String
        public var file: String
    }

    /// One line of `table` or `status`.
    public struct Line: Codable, Sendable {
        public var start: UInt64
        public var length: UInt64
        public var target: String
        /// The target's arguments (`table`) or status (`status`).
        public var params: String
    }

    public struct Lines: Codable, Sendable {
        public var name: String
        public var lines: [Line]
        /// `status` only: the NBD exports the live table uses (absent when none; the text
        /// output keeps dmsetup's format and leaves them out: `info` prints them).
        public var nbd: [NbdLinkState]? = nil
    }

    public struct Info: Codable, Sendable {
        public var name: String
        /// ACTIVE or SUSPENDED.
        public var state: String
        public var liveTable: Bool
        public var inactiveTable: Bool
        public var openCount: Int
        public var targets: Int
        public var sectors: UInt64
        public var biosetSize: Int
        /// FUSE requests the disk may have in flight, and those in it and waiting now.
        public var queueDepth: Int
        public var requestsActive: Int
        public var requestsWaiting: Int
        public var file: String
        /// For a disk created through dmsetup: its block device, the loop device's numbers,
        /// the block device's openers (a mounted file system counts once) and read-ahead.
        public var blockDevice: String? = nil
        public var major: Int? = nil
        public var minor: Int? = nil
        public var blockOpenCount: Int? = nil
        public var readAhead: Int? = nil
        /// How FUSE requests reach the daemon: "uring" or "legacy".
        public var transport: String
        /// The NBD exports the live table uses; absent when it uses none.
        public var nbd: [NbdLinkState]?
    }

    /// How a disk's connections to one NBD export are doing.
    public struct NbdLinkState: Codable, Sendable {
        public var uri: String
        /// up, reconnecting (I/O held) or down (I/O fails until a reconnect succeeds).
        public var state: String
        public var connections: Int
        public var reconnects: Int
        /// Bios out at the server or held.
        public var inFlight: Int
        /// Why the last connection dropped or attempt failed, if one has.
        public var lastError: String?

        init(_ device: NbdDevice) {
            let link = device.link
            uri = device.name
            state = link.state.rawValue
            connections = link.connections
            reconnects = link.reconnects
            inFlight = link.inFlight
            lastError = link.lastError.isEmpty ? nil : link.lastError
        }
    }

    /// One operation group's counters (dmstats / diskstats).
    public struct Counts: Codable, Sendable {
        /// Completed original I/Os, failed ones included.
        public var ios: UInt64
        /// Originals cut into more than one piece.
        public var merges: UInt64
        public var sectors: UInt64
        /// Sum of the I/Os' times from admission to completion.
        public var nanoseconds: UInt64
        /// Bucket i: latencies in [2^i, 2^(i+1)) microseconds (bucket 0 from 0).
        public var histogram: [UInt64]

        init(_ counts: DeviceStats.Counts) {
            ios = counts.ios
            merges = counts.merges
            sectors = counts.sectors
            nanoseconds = counts.nanoseconds
            histogram = counts.histogram
        }
    }

    public struct Stats: Codable, Sendable {
        public var name: String
        public var inFlight: Int
        public var read: Counts
        public var write: Counts
        public var discard: Counts
        public var flush: Counts
        /// How FUSE requests reach the daemon: "uring" or "legacy".
        public var transport: String
    }

    /// One row of `udm snapshot list`; a merge in progress shows the origin and "(COW file)".
    public struct Snapshot: Codable, Sendable {
        public var origin: String
        public var snapshot: String
        /// Chunk size in sectors, when known.
        public var chunk: UInt64?
        /// COW space in use, when known.
        public var usePercent: Double?
        public var state: String

        /// The rows of the text listing: columns separated by spaces, the state last (it may
        /// hold spaces itself); the header row is skipped.
        static func rows(of listing: String) -> [Snapshot] {
            listing.split(separator: "\n").dropFirst().compactMap { line in
                var rest = Substring(line)
                var columns: [String] = []
                while columns.count < 4 {
                    rest = rest.drop { $0 == " " }
                    let word = rest.prefix { $0 != " " }
                    guard !word.isEmpty else { return nil }
                    columns.append(String(word))
                    rest = rest.dropFirst(word.count)
                }
                return Snapshot(origin: columns[0], snapshot: columns[1], chunk: UInt64(columns[2]),
                                usePercent: Double(columns[3]), state: String(rest.drop { $0 == " " }))
            }
        }
    }

    public struct TargetType: Codable, Sendable {
        public var name: String
        public var version: String

        public init(name: String, version: String) {
            self.name = name
            self.version = version
        }
    }

    public static func json<T: Encodable>(_ values: [T], key: String = "disks") -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return (try? encoder.encode([key: values])).map { String(decoding: $0, as: UTF8.self) } ?? "{}"
    }

    // MARK: text

    static func text(_ disks: [Disk]) -> String {
        disks.isEmpty ? "No devices found" : disks.map { "\($0.name)\t(\($0.file))" }.joined(separator: "\n")
    }

    /// One disk's lines as they are; several disks' prefixed with the name.
    static func text(_ tables: [Lines], prefixed: Bool) -> String {
        tables.flatMap { table in
            table.lines.map { (prefixed ? "\(table.name): " : "") + "\($0.start) \($0.length) \($0.target) \($0.params)" }
        }.joined(separator: "\n")
    }

    static func text(_ infos: [Info]) -> String {
        infos.map { info in
            let tables = [info.liveTable ? "LIVE" : nil, info.inactiveTable ? "INACTIVE" : nil].compactMap { $0 }
            return ([
                "Name:              \(info.name)",
                "State:             \(info.state)",
                "Tables present:    \(tables.isEmpty ? "None" : tables.joined(separator: " & "))",
                "Open count:        \(info.openCount)",
                "Number of targets: \(info.targets)",
                "Size:              \(info.sectors) sectors",
                "Bioset size:       \(info.biosetSize)",
                "Queue depth:       \(info.queueDepth) (\(info.requestsActive) in flight, \(info.requestsWaiting) waiting)",
                "File:              \(info.file)",
                "Transport:         \(info.transport)",
            ] + (info.nbd ?? []).map { link in
                "NBD link:          \(link.uri) \(link.state) (\(link.connections) connection\(link.connections == 1 ? "" : "s"), "
                    + "\(link.reconnects) reconnect\(link.reconnects == 1 ? "" : "s"), \(link.inFlight) in flight)"
                    + (link.lastError.map { "; last error: \($0)" } ?? "")
            }).joined(separator: "\n") + (info.blockDevice.map { device in
                "\nBlock device:      \(device) (\(info.major ?? 0):\(info.minor ?? 0), open count \(info.blockOpenCount ?? 0))"
            } ?? "")
        }.joined(separator: "\n\n")
    }

    /// Per disk a header, then one line per operation group; the latency histogram shows the
    /// non-empty buckets as `<lower bound>:<count>`.
    static func text(_ stats: [Stats]) -> String {
        func pad(_ text: String, _ width: Int) -> String { String(repeating: " ", count: max(0, width - text.count)) + text }
        return stats.map { disk in
            var lines = ["\(disk.name): \(disk.inFlight) in flight",
                         "  op          ios   merges      sectors     time(ms)  latency(us)"]
            for (op, counts) in [("read", disk.read), ("write", disk.write), ("discard", disk.discard), ("flush", disk.flush)] {
                let milliseconds = String(format: "%.3f", Double(counts.nanoseconds) / 1e6)
                let histogram = counts.histogram.enumerated().filter { $0.element > 0 }.map { bucket, count in
                    "\(bucket == 0 ? "<2" : "\(1 << bucket)"):\(count)"
                }.joined(separator: " ")
                lines.append("  " + op.padding(toLength: 8, withPad: " ", startingAt: 0) + pad("\(counts.ios)", 8)
                             + pad("\(counts.merges)", 9) + pad("\(counts.sectors)", 13) + pad(milliseconds, 13)
                             + (histogram.isEmpty ? "" : "  " + histogram))
            }
            return lines.joined(separator: "\n")
        }.joined(separator: "\n\n")
    }
}

extension DeviceRegistry {
    /// The named disk, or every disk in creation order.
    private func selected(_ name: String?) throws -> [String] {
        try name.map { _ = try record($0); return [$0] } ?? order
    }

    public func listing() -> [Reports.Disk] {
        locked { order.map { Reports.Disk(name: $0, file: fuse.path(of: $0)) } }
    }

    /// `udm table` / `udm status`: each disk's live table lines.
    public func lines(_ name: String?, _ kind: StatusKind) throws -> [Reports.Lines] {
        try locked {
            try selected(name).map { disk in
                let entries = records[disk]?.device.live?.entries ?? []
                let nbd = kind == .info ? records[disk]?.liveNbd ?? [] : []
                return Reports.Lines(name: disk, lines: entries.map {
                    Reports.Line(start: $0.begin, length: $0.length, target: type(of: $0.target).name, params: $0.target.status(kind))
                }, nbd: nbd.isEmpty ? nil : nbd.map(Reports.NbdLinkState.init))
            }
        }
    }

    public func info(_ name: String?) throws -> [Reports.Info] {
        try locked {
            try selected(name).map { disk in
                let device = records[disk]!.device
                let live = device.live
                let requests = fuse.requestCounts(name: disk)
                return Reports.Info(name: disk, state: device.isSuspended ? "SUSPENDED" : "ACTIVE",
                                    liveTable: live != nil, inactiveTable: device.loaded != nil,
                                    openCount: fuse.openCount(name: disk), targets: live?.entries.count ?? 0,
                                    sectors: device.sectors, biosetSize: live?.bioSet.capacity ?? config.bioSetSize,
                                    queueDepth: fuse.queueDepth, requestsActive: requests.active,
                                    requestsWaiting: requests.waiting, file: fuse.path(of: disk),
                                    transport: fuse.transport.rawValue,
                                    nbd: records[disk]!.liveNbd.isEmpty ? nil : records[disk]!.liveNbd.map(Reports.NbdLinkState.init))
            }
        }
    }

    /// `udm stats`: each disk's counters; with `clear`, they start again from zero.
    public func stats(_ name: String?, clear: Bool) throws -> [Reports.Stats] {
        try locked {
            try selected(name).map { disk in
                let device = records[disk]!.device
                let stats = clear ? device.takeStatistics() : device.statistics()
                return Reports.Stats(name: disk, inFlight: stats.inFlight, read: .init(stats[.read]),
                                     write: .init(stats[.write]), discard: .init(stats[.discard]), flush: .init(stats[.flush]),
                                     transport: fuse.transport.rawValue)
            }
        }
    }
}
