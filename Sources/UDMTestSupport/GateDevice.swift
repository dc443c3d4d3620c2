import Glibc
import UDMCore

/// Bios wait at the gate until it opens, then go to an in-memory device.
public final class GateDevice: BlockDevice, @unchecked Sendable {
    public let name: String
    public let inner: MemoryDevice
    private let opened = Completion()
    private let lock = ConditionLock()
    private var arrivedCount = 0

    public init(name: String, sectors: UInt64) {
        self.name = name
        inner = MemoryDevice(name: name + "-inner", sectors: sectors, recording: false)
    }

    public var sectors: UInt64 { inner.sectors }
    public var discardZeroes: Bool { false }
    public var arrived: Int { lock.withLock { arrivedCount } }
    public func open() { opened.signal() }

    public func submitBio(_ bio: Bio) {
        lock.withLock { arrivedCount += 1 }
        opened.wait()
        bio.submit(to: inner)
    }

    /// Waits (bounded) until `count` bios have arrived.
    public func waitForArrivals(_ count: Int) {
        for _ in 0..<20_000 where arrived < count { usleep(1000) }
    }
}
