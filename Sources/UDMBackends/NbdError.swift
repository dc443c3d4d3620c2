/// Why an NBD export could not be used: the URI and the cause, on one line
/// (`nbd://127.0.0.1:10809/a: connect: Connection refused`).
public struct NbdError: Error, CustomStringConvertible, Sendable {
    public let uri: String
    public let cause: String

    public init(_ uri: String, _ cause: String) {
        self.uri = uri
        // libnbd's messages name the call first and may span lines; keep one line.
        self.cause = cause.split(whereSeparator: \.isNewline).joined(separator: " ")
    }

    public var description: String { "\(uri): \(cause)" }
}
