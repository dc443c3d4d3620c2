/// The state of a disk's connections to one NBD export, for `udm info` and `status --json`.
public struct NbdLink: Sendable, Equatable {
    public enum State: String, Sendable {
        /// Every connection is serving I/O.
        case up
        /// A connection dropped; its I/O is held while udm reconnects (up to --nbd-timeout).
        case reconnecting
        /// Reconnecting timed out: I/O fails with EIO until a later attempt succeeds.
        case down
    }

    public var state: State
    /// Successful reconnects since the device was opened.
    public var reconnects: Int
    public var connections: Int
    /// Bios the connections have taken on and not ended: out at the server, or held.
    public var inFlight: Int
    /// Why the last connection dropped or the last attempt failed; empty if none has.
    public var lastError: String
}
