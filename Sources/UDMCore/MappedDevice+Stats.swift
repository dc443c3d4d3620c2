import Synchronization

/// I/O statistics of one mapped device, like /proc/diskstats and dmstats: per operation group,
/// originals completed, originals that needed more than one clone ("merges", which for a
/// device that splits rather than merges counts the splits), sectors, total time from
/// admission to completion, and a latency histogram with log2 buckets.
///
/// Counted by the device when an original bio completes (`record`), with relaxed atomic adds
/// and one clock read: no lock and no allocation on the I/O path. Readers take a `Snapshot`;
/// the counters are independent, so a snapshot taken during I/O may be one I/O apart between
/// fields.
public final class DeviceStats: Sendable {
    /// diskstats' groups: write-zeroes count as writes, a PREFLUSH write as a write.
    public enum Group: Int, CaseIterable, Sendable {
        case read, write, discard, flush

        init(_ op: BioOp) {
            switch op {
            case .read: self = .read
            case .write, .writeZeroes: self = .write
            case .discard: self = .discard
            case .flush: self = .flush
            }
        }
    }

    /// Bucket i counts latencies in [2^i, 2^(i+1)) microseconds; bucket 0 also those under
    /// 1 µs, the last one everything from 2^31 µs (about 36 minutes) on.
    public static let histogramBuckets = 32

    public struct Counts: Equatable, Sendable {
        public var ios: UInt64 = 0
        public var merges: UInt64 = 0
        public var sectors: UInt64 = 0
        public var nanoseconds: UInt64 = 0
        public var histogram = [UInt64](repeating: 0, count: DeviceStats.histogramBuckets)
        public init() {}
    }

    public struct Snapshot: Equatable, Sendable {
        /// Indexed by `Group.rawValue`.
        public var groups: [Counts]
        /// Originals admitted and not yet completed.
        public var inFlight: Int
        public subscript(group: Group) -> Counts { groups[group.rawValue] }
    }

    private struct Counters: ~Copyable, Sendable {
        let ios = Atomic<UInt64>(0)
        let merges = Atomic<UInt64>(0)
        let sectors = Atomic<UInt64>(0)
        let nanoseconds = Atomic<UInt64>(0)
        let histogram: [32 of Atomic<UInt64>] = InlineArray { _ in Atomic(0) }
    }

    private let groups: [4 of Counters] = InlineArray { _ in Counters() }

    public init() {}

    @inline(__always)
    func record(_ op: BioOp, sectors: UInt64, pieces: UInt32, startedAt: UInt64) {
        let elapsed = monotonicNanoseconds() &- startedAt
        let microseconds = elapsed / 1000
        let bucket = microseconds == 0 ? 0 : min(Self.histogramBuckets - 1, 63 - microseconds.leadingZeroBitCount)
        let counters = Group(op).rawValue
        groups[counters].ios.add(1, ordering: .relaxed)
        groups[counters].sectors.add(sectors, ordering: .relaxed)
        groups[counters].nanoseconds.add(elapsed, ordering: .relaxed)
        groups[counters].histogram[bucket].add(1, ordering: .relaxed)
        if pieces > 1 { groups[counters].merges.add(1, ordering: .relaxed) }
    }

    func snapshot(inFlight: Int) -> Snapshot {
        var snapshot = Snapshot(groups: [], inFlight: inFlight)
        for index in 0..<4 {
            var counts = Counts()
            counts.ios = groups[index].ios.load(ordering: .relaxed)
            counts.merges = groups[index].merges.load(ordering: .relaxed)
            counts.sectors = groups[index].sectors.load(ordering: .relaxed)
            counts.nanoseconds = groups[index].nanoseconds.load(ordering: .relaxed)
            for bucket in 0..<Self.histogramBuckets {
                counts.histogram[bucket] = groups[index].histogram[bucket].load(ordering: .relaxed)
            }
            snapshot.groups.append(counts)
        }
        return snapshot
    }

    /// Subtracts `snapshot` (taken earlier) from the counters, so I/O that completed after it
    /// was taken is kept (dmstats clear).
    func subtract(_ snapshot: Snapshot) {
        for (index, counts) in snapshot.groups.enumerated() {
            groups[index].ios.subtract(counts.ios, ordering: .relaxed)
            groups[index].merges.subtract(counts.merges, ordering: .relaxed)
            groups[index].sectors.subtract(counts.sectors, ordering: .relaxed)
            groups[index].nanoseconds.subtract(counts.nanoseconds, ordering: .relaxed)
            for bucket in 0..<Self.histogramBuckets {
                groups[index].histogram[bucket].subtract(counts.histogram[bucket], ordering: .relaxed)
            }
        }
    }
}

extension MappedDevice {
    /// The device's counters now.
    public func statistics() -> DeviceStats.Snapshot {
        stats.snapshot(inFlight: inFlight.load(ordering: .relaxed))
    }

    /// Returns the counters and starts them again from zero.
    public func takeStatistics() -> DeviceStats.Snapshot {
        let snapshot = statistics()
        stats.subtract(snapshot)
        return snapshot
    }

    /// An original bio was admitted: note when, for its latency.
    @inline(__always)
    func statsAdmitted(_ bio: Bio) {
        bio.startedAt = monotonicNanoseconds()
        bio.pieces = 0
    }

    /// An original bio completed (not requeued).
    @inline(__always)
    func statsCompleted(_ bio: Bio) {
        stats.record(bio.op, sectors: bio.sectors, pieces: bio.pieces, startedAt: bio.startedAt)
    }
}
