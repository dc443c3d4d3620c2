/// How a bio ended: 0 or an errno value, as the block layer's blk_status_t maps to errno.
public struct BioStatus: Error, Equatable, Sendable, CustomStringConvertible {
    public let errno: Int32
    public init(errno: Int32) { self.errno = errno }

    public static let ok = BioStatus(errno: 0)
    public static let ioError = BioStatus(errno: 5)        // EIO
    public static let wouldBlock = BioStatus(errno: 11)    // EAGAIN
    public static let noSpace = BioStatus(errno: 28)       // ENOSPC
    public static let notSupported = BioStatus(errno: 95)  // EOPNOTSUPP
    /// Internal: the target asked for the whole bio to be tried again (dm's DM_MAPIO_REQUEUE).
    static let requeue = BioStatus(errno: -1)

    public var isOK: Bool { errno == 0 }

    public var description: String {
        switch errno {
        case 0: "ok"
        case 5: "EIO"
        case 11: "EAGAIN"
        case 28: "ENOSPC"
        case 95: "EOPNOTSUPP"
        case -1: "requeue"
        default: "errno \(errno)"
        }
    }
}
