import Synchronization
import UDMBackends
import UDMCore

/// The NBD exports one table names, connected before the registry lock is taken: a connect
/// may wait up to `--nbd-timeout`, and no command may wait on a server while holding the lock
/// every other command needs. The table's `TableResolver` takes its devices from here, and a
/// failed connect is thrown where the resolver meets the URI, so errors read as before.
/// Whatever no table kept is closed by `DeviceRegistry.closeUnused`, outside the lock.
final class NbdConnections: Sendable {
    /// By URI text; one device per URI, as a table opens each argument once.
    private let devices: [String: Result<NbdDevice, NbdError>]

    /// None: a table without NBD URIs.
    init() { devices = [:] }

    /// Connects to `uris`, all at once: each beyond the first on a thread of its own, as a
    /// connect blocks up to `timeout` (not on a shared pool, which it would starve).
    init(connecting uris: [String], timeout: Double) {
        let distinct = uris.reduce(into: [String]()) { if !$0.contains($1) { $0.append($1) } }
        let results = Mutex<[String: Result<NbdDevice, NbdError>]>([:])
        let connect: @Sendable (String) -> Void = { uri in
            let result = Result { () throws(NbdError) -> NbdDevice in
                guard let parsed = NbdURI(uri) else { throw NbdError(uri, "not an NBD URI") }
                return try NbdDevice(uri: parsed, timeout: timeout)
            }
            results.withLock { $0[uri] = result }
        }
        let others = distinct.dropFirst().map { uri in
            let done = Completion()
            startThread {
                connect(uri)
                done.signal()
            }
            return done
        }
        distinct.first.map(connect)
        others.forEach { $0.wait() }
        devices = results.withLock { $0 }
    }

    /// The NBD URIs among the arguments of `table` (none if it does not parse: its build then
    /// fails with the parse error).
    static func uris(in table: String) -> [String] {
        ((try? TableLine.parse(table)) ?? []).flatMap { $0.arguments.filter { NbdURI($0) != nil } }
    }

    /// The device connected for `uri`, or why it could not be.
    func device(for uri: NbdURI) throws(NbdError) -> NbdDevice {
        guard let result = devices[uri.text] else {
            throw NbdError(uri.text, "not among the table's arguments connected before it was built")
        }
        return try result.get()
    }

    /// The devices that did connect.
    var connected: [NbdDevice] {
        devices.values.compactMap { try? $0.get() }
    }
}
