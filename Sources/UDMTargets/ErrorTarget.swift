import UDMCore

/// `error`: every I/O fails with EIO (dm-target.c, io_err). Takes no arguments; table and
/// status are empty.
public final class ErrorTarget: Target {
    public static let name = "error"
    public static let version = (1, 7, 0)

    public init(arguments: [String], context: TargetContext) throws {
        guard arguments.isEmpty else {
            throw TargetError("error takes no arguments, got \(arguments.count)", argument: 1)
        }
    }

    public func map(_ bio: Bio) -> MapResult { .kill(.ioError) }

    /// Nothing to make durable: flushes are not sent here (as in dm).
    public var flushBios: Int { 0 }

    public func status(_ kind: StatusKind) -> String { "" }
}
