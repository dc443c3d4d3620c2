/// Adjacent bios a thread's plug hands a device in one call (dm: the bios of one merged
/// request): same device, same operation and flags, each starting where the previous ends.
/// Only the first may carry PREFLUSH.
public struct BioRun: Sequence {
    /// The most bios in one run (well under the kernel's 1024 iovecs per call).
    public static let maxCount = 256

    public let first: Bio
    public let count: Int
    public let bytes: Int

    public var sector: UInt64 { first.sector }
    public var op: BioOp { first.op }
    public var flags: BioFlags { first.flags }

    public func makeIterator() -> Iterator { Iterator(current: first) }

    /// Moves past a bio before handing it out, so the device may end each bio as it goes
    /// (an ended clone goes back to its pool, which reuses its link).
    public struct Iterator: IteratorProtocol {
        var current: Bio?

        public mutating func next() -> Bio? {
            let bio = current
            current = bio?.next
            return bio
        }
    }
}
