import UDMCore

/// `zero`: reads return zeros, writes and discards are accepted and dropped (dm-zero.c).
/// Takes no arguments; table and status are empty.
public final class ZeroTarget: Target {
    public static let name = "zero"
    public static let version = (1, 2, 0)

    public init(arguments: [String], context: TargetContext) throws {
        guard arguments.isEmpty else {
            throw TargetError("zero takes no arguments, got \(arguments.count)", argument: 1)
        }
    }

    public var discardZeroes: Bool { true }

    public func map(_ bio: Bio) -> MapResult {
        if bio.op == .read, let buffer = bio.buffer {
            buffer.initializeMemory(as: UInt8.self, repeating: 0, count: bio.byteCount)
        }
        bio.end(.ok)
        return .submitted
    }

    /// Nothing to make durable: flushes are not sent here (as in dm).
    public var flushBios: Int { 0 }

    public func status(_ kind: StatusKind) -> String { "" }
}
