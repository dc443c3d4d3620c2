import Synchronization
import UDMCore

/// An in-memory `BlockDevice` for unit tests: records every bio it sees and can fail chosen
/// sectors, so tests can check where the pipeline sent what.
public final class MemoryDevice: BlockDevice, @unchecked Sendable {
    public struct Seen: Equatable, Sendable {
        public let op: BioOp
        public let sector: UInt64
        public let sectors: UInt64

        public init(op: BioOp, sector: UInt64, sectors: UInt64) {
            self.op = op
            self.sector = sector
            self.sectors = sectors
        }
    }

    public let name: String
    public let sectors: UInt64
    public var discardZeroes: Bool { true }
    private let bytes: UnsafeMutableRawPointer
    private let log = Mutex<[Seen]>([])
    private let failing = Mutex<[ClosedRange<UInt64>: BioStatus]>([:])

    private let recording: Bool
    private let runLog = Mutex<[Seen]>([])
    public let maxRunBytes: Int

    /// `recording: false` keeps no log (for stress tests that issue millions of bios).
    /// `maxRunBytes` > 0: reads and writes wait on the plug and arrive in runs (`runs`).
    public init(name: String = "mem", sectors: UInt64, recording: Bool = true, maxRunBytes: Int = 0) {
        self.name = name
        self.sectors = sectors
        self.recording = recording
        self.maxRunBytes = maxRunBytes
        bytes = .allocate(byteCount: Int(sectors) << 9, alignment: 4096)
        bytes.initializeMemory(as: UInt8.self, repeating: 0, count: Int(sectors) << 9)
    }

    deinit { bytes.deallocate() }

    /// Bios seen so far, in arrival order.
    public var seen: [Seen] { log.withLock { $0 } }
    public func clearLog() { log.withLock { $0.removeAll() } }
    /// Runs handed over by the plug, each as one op over the sectors it covers.
    public var runs: [Seen] { runLog.withLock { $0 } }

    public func submitRun(_ run: BioRun) {
        if recording {
            let sectors = UInt64(run.bytes >> 9)
            runLog.withLock { $0.append(Seen(op: run.op, sector: run.sector, sectors: sectors)) }
        }
        for bio in run { submitBio(bio) }
    }

    /// I/O touching `range` ends with `status`.
    public func fail(_ range: ClosedRange<UInt64>, with status: BioStatus = .ioError) {
        failing.withLock { $0[range] = status }
    }

    public func byte(at offset: Int) -> UInt8 { bytes.load(fromByteOffset: offset, as: UInt8.self) }
    public func fill(_ value: UInt8, at offset: Int, count: Int) {
        (bytes + offset).initializeMemory(as: UInt8.self, repeating: value, count: count)
    }

    public func submitBio(_ bio: Bio) {
        if recording { log.withLock { $0.append(Seen(op: bio.op, sector: bio.sector, sectors: bio.sectors)) } }
        let last = bio.sector + max(bio.sectors, 1) - 1
        if let status = failing.withLock({ $0.first { $0.key.overlaps(bio.sector...last) }?.value }) {
            bio.end(status)
            return
        }
        guard bio.sector + bio.sectors <= sectors else {
            bio.end(.ioError)
            return
        }
        let offset = Int(bio.sector) << 9
        switch bio.op {
        case .read: bio.buffer!.copyMemory(from: bytes + offset, byteCount: bio.byteCount)
        case .write: (bytes + offset).copyMemory(from: bio.buffer!, byteCount: bio.byteCount)
        case .discard, .writeZeroes: fill(0, at: offset, count: bio.byteCount)
        case .flush: break
        }
        bio.end(.ok)
    }
}
