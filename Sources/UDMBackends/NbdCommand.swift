import CNbd
import UDMCore

/// One bio on its way through a connection: a preallocated slot (a connection has a fixed set,
/// so issuing a command allocates nothing) whose address is the user data of every libnbd
/// command issued for it. A bio larger than the server's maximum request goes out as several
/// parts; the slot counts the parts still unanswered and keeps the first error. Touched only
/// by the connection's poll thread (libnbd runs completion callbacks on the thread that
/// drives the handle).
final class NbdCommand {
    /// What is being sent for the bio now: a PREFLUSH before a write's data, the data (or the
    /// flush, discard, write-zeroes itself), or the flush that stands in for FUA on a server
    /// that can flush but not FUA.
    enum Phase {
        case preflush
        case data
        case postflush
    }

    unowned(unsafe) let connection: NbdConnection
    var bio: Bio?
    var phase = Phase.data
    /// Parts issued and not yet answered, plus one while they are being issued.
    var partsPending = 0
    var error: Int32 = 0
    /// On the connection's free list or completed list.
    var next: NbdCommand?

    init(connection: NbdConnection) {
        self.connection = connection
    }

    /// The callback handed to libnbd with each part.
    var callback: nbd_completion_callback {
        nbd_completion_callback(callback: nbdCommandPartEnded,
                                user_data: Unmanaged.passUnretained(self).toOpaque(), free: nil)
    }

    func partEnded(_ error: Int32) {
        if error != 0 && self.error == 0 { self.error = error }
        partsPending -= 1
        if partsPending == 0 { connection.commandAnswered(self) }
    }
}

/// libnbd's completion callback: one part answered (error 0 or an errno). Returning 1 retires
/// the command inside libnbd.
private let nbdCommandPartEnded: @convention(c) (UnsafeMutableRawPointer?, UnsafeMutablePointer<Int32>?) -> Int32 = {
    context, error in
    Unmanaged<NbdCommand>.fromOpaque(context!).takeUnretainedValue().partEnded(error?.pointee ?? 0)
    return 1
}
