/// A device's mapping: targets that tile [0, sectors) without gaps (dm: `struct dm_table`).
/// Immutable once built; a device swaps whole tables on resume.
public final class Table: Sendable {
    public struct Entry: Sendable {
        public let begin: UInt64
        public let length: UInt64
        public let target: Target
        public let line: TableLine
        public var end: UInt64 { begin + length }
    }

    /// The largest disk: its size in bytes must fit a file offset (Int64).
    public static let maxSectors = UInt64(Int64.max) >> 9

    public let entries: [Entry]
    public let sectors: UInt64
    /// The clones of this table's I/O; sized for its largest duplicate count and per-bio data.
    public let bioSet: BioSet
    private let starts: [UInt64]

    /// Builds the targets of `lines`, rejecting a gap, an overlap, a zero length, an unknown
    /// target type or a target's own complaint, naming the line and field.
    public init(lines: [TableLine], registry: TargetRegistry, resolver: DeviceResolver,
                bioSetSize: Int, services: TargetServices = TargetServices()) throws(TableError) {
        guard !lines.isEmpty else {
            throw TableError(line: nil, field: nil, "the table has no lines")
        }
        var entries: [Entry] = []
        var next: UInt64 = 0
        for line in lines {
            if line.start != next {
                let what = line.start > next ? "gap: sectors \(next)..\(line.start - 1) are not mapped"
                                             : "overlaps the previous line, which ends at sector \(next)"
                throw TableError(line: line.lineNumber, field: "start", "\(line.start): \(what)")
            }
            guard line.length > 0 else {
                throw TableError(line: line.lineNumber, field: "length", "must be greater than zero")
            }
            let (end, overflow) = line.start.addingReportingOverflow(line.length)
            guard !overflow, end <= Table.maxSectors else {
                throw TableError(line: line.lineNumber, field: "length", "\(line.length) makes the disk larger than \(Table.maxSectors) sectors (2^63 bytes)")
            }
            guard let type = registry.type(named: line.type) else {
                throw TableError(line: line.lineNumber, field: "target type", "unknown target type '\(line.type)'")
            }
            let context = TargetContext(begin: line.start, length: line.length, resolver: resolver, services: services)
            let target: Target
            do {
                target = try type.init(arguments: line.arguments, context: context)
            } catch let error as TargetError {
                let field = error.argument.map { "argument \($0) of \(line.type)" } ?? line.type
                throw TableError(line: line.lineNumber, field: field, error.message)
            } catch {
                throw TableError(line: line.lineNumber, field: line.type, "\(error)")
            }
            entries.append(Entry(begin: line.start, length: line.length, target: target, line: line))
            next = end
        }
        self.entries = entries
        self.sectors = next
        self.starts = entries.map(\.begin)
        let duplicates = entries.map { max($0.target.flushBios, $0.target.discardBios, $0.target.writeZeroesBios) }.max() ?? 1
        let perBio = entries.map(\.target.perBioDataSize).max() ?? 0
        self.bioSet = BioSet(capacity: max(bioSetSize, duplicates, 1), perBioDataSize: perBio)
    }

    /// Index of the entry holding `sector` (which must be < `sectors`): binary search over starts.
    @inline(__always)
    public func entryIndex(for sector: UInt64) -> Int {
        var low = 0
        var high = starts.count - 1
        while low < high {
            let mid = (low + high + 1) >> 1
            if starts[mid] <= sector { low = mid } else { high = mid - 1 }
        }
        return low
    }

    /// Whether every target under [sector, sector+count) reads discarded sectors back as zeros.
    public func discardZeroes(sector: UInt64, count: UInt64) -> Bool {
        guard count > 0, sector < sectors else { return true }
        var index = entryIndex(for: sector)
        let end = min(sector + count, sectors)
        while index < entries.count && entries[index].begin < end {
            if !entries[index].target.discardZeroes { return false }
            index += 1
        }
        return true
    }

    /// Lines as `dmsetup table` (kind `.table`) or `dmsetup status` (kind `.info`) print them.
    public func lines(_ kind: StatusKind) -> [String] {
        entries.map { "\($0.begin) \($0.length) \(type(of: $0.target).name) \($0.target.status(kind))" }
    }
}
