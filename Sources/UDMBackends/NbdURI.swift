/// A table argument naming an NBD export: `nbd://HOST[:PORT]/EXPORT`, `nbds://…` (TLS),
/// `nbd+unix:///EXPORT?socket=PATH`, `nbd+vsock://…`. Only the scheme is checked here; libnbd
/// parses the rest when it connects (and says what is wrong). The text is kept exactly as
/// given, so `udm table` prints it back.
public struct NbdURI: Sendable, Hashable, CustomStringConvertible {
    /// The schemes libnbd's URI parser takes (the NBD URI specification's).
    public static let schemes = ["nbd", "nbds", "nbd+unix", "nbds+unix", "nbd+vsock", "nbds+vsock"]

    public let text: String

    /// Nil when `argument` does not start with one of the NBD schemes.
    public init?(_ argument: String) {
        guard let colon = argument.firstIndex(of: ":"),
              Self.schemes.contains(argument[..<colon].lowercased()),
              argument[colon...].hasPrefix("://") else { return nil }
        text = argument
    }

    public var usesTLS: Bool { text.lowercased().hasPrefix("nbds") }

    public var description: String { text }
}
