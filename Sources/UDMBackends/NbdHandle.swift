import CNbd
import Glibc

/// One libnbd handle connected to an export, and what the server said about it (size,
/// capabilities, block-size constraints). Used by one thread at a time: the connection's poll
/// thread, or the opener before the connection starts.
final class NbdHandle: @unchecked Sendable {
    let raw: OpaquePointer
    let bytes: UInt64
    let readOnly: Bool
    let canFlush: Bool
    let canFua: Bool
    let canTrim: Bool
    let canZero: Bool
    let canMultiConn: Bool
    /// Block-size constraints in bytes (1 and 32 MiB where the server does not say); the
    /// preferred size is not used: udm sends what its bios are.
    let minimumBlock: Int
    let maximumBlock: Int
    /// The largest request udm sends: the maximum in whole sectors, at most NBD's default 32 MiB.
    var maximumRequest: Int { max(min(maximumBlock, 32 << 20) & ~511, 512) }

    /// Connects to `uri` and negotiates, giving up at `deadline` (monotonic nanoseconds).
    /// Throws one line naming the URI and the cause.
    init(uri: String, deadline: UInt64) throws(NbdError) {
        guard let raw = nbd_create() else { throw NbdError(uri, Self.lastError()) }
        self.raw = raw
        do throws(NbdError) {
            // udm ends every bio with its own status; libnbd need not zero read buffers first.
            _ = nbd_set_pread_initialize(raw, false)
            // Simple replies: udm needs no hole chunks or block status, and libnbd reads a
            // simple read reply in two recv calls where a structured one takes three.
            _ = nbd_set_request_structured_replies(raw, false)
            _ = nbd_set_handle_name(raw, "udm")
            if NbdURI(uri)?.usesTLS == true && nbd_supports_tls(raw) != 1 {
                throw NbdError(uri, "this libnbd was built without TLS support")
            }
            guard nbd_aio_connect_uri(raw, uri) == 0 else { throw NbdError(uri, Self.lastError()) }
            while nbd_aio_is_ready(raw) != 1 {
                if nbd_aio_is_dead(raw) == 1 || nbd_aio_is_closed(raw) == 1 {
                    throw NbdError(uri, Self.lastError())
                }
                let now = monotonicNanoseconds()
                guard now < deadline else { throw NbdError(uri, "no answer from the server in time") }
                let milliseconds = Int32(min((deadline - now) / 1_000_000 + 1, 1000))
                if nbd_poll(raw, milliseconds) < 0 { throw NbdError(uri, Self.lastError()) }
            }
            let size = nbd_get_size(raw)
            guard size >= 0 else { throw NbdError(uri, Self.lastError()) }
            bytes = UInt64(size)
            readOnly = nbd_is_read_only(raw) == 1
            canFlush = nbd_can_flush(raw) == 1
            canFua = nbd_can_fua(raw) == 1
            canTrim = nbd_can_trim(raw) == 1
            canZero = nbd_can_zero(raw) == 1
            canMultiConn = nbd_can_multi_conn(raw) == 1
            let minimum = nbd_get_block_size(raw, Int32(LIBNBD_SIZE_MINIMUM))
            let maximum = nbd_get_block_size(raw, Int32(LIBNBD_SIZE_MAXIMUM))
            minimumBlock = minimum > 0 ? Int(minimum) : 1
            maximumBlock = maximum > 0 ? Int(maximum) : 32 << 20
        } catch {
            nbd_close(raw)
            throw error
        }
    }

    deinit { nbd_close(raw) }

    var isDead: Bool { nbd_aio_is_dead(raw) == 1 || nbd_aio_is_closed(raw) == 1 }

    /// The calling thread's last libnbd error message.
    static func lastError() -> String {
        nbd_get_error().map { String(cString: $0) } ?? "unknown libnbd error"
    }
}

/// CLOCK_MONOTONIC in nanoseconds.
func monotonicNanoseconds() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
}
