/// Why an NBD export could not be used: the URI and the cause, on one line
/// (`nbd://127.0.0.1:10809/a: connect: Connection refused`).
public struct NbdError: Error, CustomStringConvertible, Sendable {
    public let uri: String
    public let cause: String

    public init(_ uri: String, _ cause: String) {
        self.uri = uri
        // libnbd's messages may span lines and start with the API call's name
        // (`nbd_aio_connect_uri: `), which says nothing to a user: one line, without it.
        var line = cause.split(whereSeparator: \.isNewline).joined(separator: " ")
        let call = line.prefix { $0 != " " }
        if call.hasPrefix("nbd_") && call.hasSuffix(":") {
            line = String(line.dropFirst(call.count + 1))
        }
        self.cause = line
    }

    public var description: String { "\(uri): \(cause)" }
}
