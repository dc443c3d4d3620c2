import Glibc
import Synchronization
import UDMCore

/// A `BlockDevice` over an NBD export, through libnbd: a table argument that is an NBD URI.
///
/// Opening connects and negotiates (failing with one line naming the URI and the cause);
/// when the server advertises multi-conn, `defaultConnections` connections are opened and
/// bios are spread over them one by one (a flush on any of them then covers writes completed
/// on all, which is what multi-conn promises). Each connection is asynchronous and reconnects
/// by itself (see `NbdConnection`); `link` reports how they are doing.
///
/// The server's block-size constraints: requests are cut at its maximum; an export whose
/// minimum block is larger than a sector is refused (udm's bios are 512-byte aligned and
/// there is no read-modify-write here).
public final class NbdDevice: BlockDevice, @unchecked Sendable {
    public static let maxConnections = 4
    /// One connection per CPU, at most `maxConnections`: each has a poll thread, and past the
    /// CPU count more only add switching (on 2 cores, 4 connections cost udm about 20% and
    /// nbdkit about 30% more CPU per 4k I/O than 2, and moved no more).
    public static let defaultConnections = min(maxConnections, max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN))))

    /// The URI exactly as the table gave it.
    public let name: String
    public let sectors: UInt64
    /// What the server said at open: its maximum request in bytes, and multi-conn.
    public let maximumBlock: Int
    public let canMultiConn: Bool
    private let connections: [NbdConnection]
    private let nextConnection = Atomic<Int>(0)

    /// NBD's trim leaves the data undefined.
    public var discardZeroes: Bool { false }

    /// Connects within `timeout` seconds; the same timeout bounds how long a dropped
    /// connection's I/O is held while reconnecting.
    public init(uri: NbdURI, timeout: Double, connections wanted: Int = defaultConnections) throws(NbdError) {
        let nanoseconds = UInt64(max(timeout, 0.001) * 1e9)
        let first = try NbdHandle(uri: uri.text, deadline: monotonicNanoseconds() + nanoseconds)
        guard first.minimumBlock <= sectorSize else {
            throw NbdError(uri.text, "the export needs requests aligned to \(first.minimumBlock) bytes; udm sends 512-byte sectors")
        }
        name = uri.text
        sectors = first.bytes >> sectorShift
        maximumBlock = first.maximumBlock
        canMultiConn = first.canMultiConn
        var handles = [first]
        if first.canMultiConn {
            for _ in 1..<max(1, min(wanted, Self.maxConnections)) {
                handles.append(try NbdHandle(uri: uri.text, deadline: monotonicNanoseconds() + nanoseconds))
            }
        }
        let sectors = sectors
        connections = handles.map { NbdConnection(handle: $0, uri: uri.text, timeout: nanoseconds, sectors: sectors) }
    }

    deinit { close() }

    /// Disconnects now, not when the last reference goes (a removed disk's table may outlive
    /// it while the kernel still knows its file); bios submitted later fail with EIO.
    public func close() {
        for connection in connections { connection.stop() }
    }

    public func submitBio(_ bio: Bio) {
        let index = connections.count == 1 ? 0 : nextConnection.add(1, ordering: .relaxed).oldValue % connections.count
        connections[index].submit(bio)
    }

    /// The worst state of any connection, and their reconnects summed.
    public var link: NbdLink {
        var result = NbdLink(state: .up, reconnects: 0, connections: connections.count, inFlight: 0, lastError: "")
        for connection in connections {
            let link = connection.link
            result.reconnects += link.reconnects
            result.inFlight += link.inFlight
            if !link.lastError.isEmpty { result.lastError = link.lastError }
            if link.state == .down || (link.state == .reconnecting && result.state == .up) { result.state = link.state }
        }
        return result
    }
}
