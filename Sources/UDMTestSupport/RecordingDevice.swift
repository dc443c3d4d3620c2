import Synchronization
import UDMCore

/// A pass-through `BlockDevice` that appends "NAME sector+sectors" to a shared log each time a
/// bio reaches it, then forwards the bio to `inner`: shows in which order the pipeline
/// handles the pieces of a split bio across stacked devices.
public final class RecordingDevice: BlockDevice, @unchecked Sendable {
    public let name: String
    private let inner: BlockDevice
    private let log: EventLog

    public init(name: String, inner: BlockDevice, log: EventLog) {
        self.name = name
        self.inner = inner
        self.log = log
    }

    public var sectors: UInt64 { inner.sectors }
    public var discardZeroes: Bool { inner.discardZeroes }

    public func submitBio(_ bio: Bio) {
        log.append("\(name) \(bio.sector)+\(bio.sectors)")
        bio.submit(to: inner)
    }
}

/// Lines appended from any thread, read back in order.
public final class EventLog: Sendable {
    private let lines = Mutex<[String]>([])
    public init() {}
    public func append(_ line: String) { lines.withLock { $0.append(line) } }
    public var all: [String] { lines.withLock { $0 } }
}
