import UDMCore

/// `error`: every I/O fails with EIO (dm-target.c, io_err). Arguments are accepted and
/// ignored, as the kernel does (checked on 6.1: xfstests' dmerror loads `error DEV 0` to swap
/// a linear table out); table and status are empty.
public final class ErrorTarget: Target {
    public static let name = "error"
    public static let version = (1, 7, 0)

    public init(arguments: [String], context: TargetContext) throws {}

    public func map(_ bio: Bio) -> MapResult { .kill(.ioError) }

    /// Nothing to make durable: flushes are not sent here (as in dm).
    public var flushBios: Int { 0 }

    public func status(_ kind: StatusKind) -> String { "" }
}
