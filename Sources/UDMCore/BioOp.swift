/// What a bio asks of a device (dm: the REQ_OP_* of `struct bio`).
public enum BioOp: UInt8, Sendable, CustomStringConvertible {
    case read, write
    /// An empty flush: everything completed before it is durable when it completes.
    case flush
    /// The sectors are no longer needed; what they read back as depends on the device.
    case discard
    /// The sectors must read back as zeros.
    case writeZeroes

    public var description: String {
        switch self {
        case .read: "read"
        case .write: "write"
        case .flush: "flush"
        case .discard: "discard"
        case .writeZeroes: "write-zeroes"
        }
    }

    /// Reads and writes carry data and are split at each target's maximum I/O length;
    /// the other operations carry only a range (or none) and go out as duplicate clones.
    public var carriesData: Bool { self == .read || self == .write }
}

/// Modifiers of a bio (dm: REQ_PREFLUSH, REQ_FUA).
public struct BioFlags: OptionSet, Sendable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    /// Flush the device's volatile cache before this bio's data is written.
    public static let preflush = BioFlags(rawValue: 1)
    /// The write is durable when it completes.
    public static let fua = BioFlags(rawValue: 2)
}
