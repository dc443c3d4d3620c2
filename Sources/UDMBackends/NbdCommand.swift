import CNbd
import Synchronization
import UDMCore

/// One bio on its way through a connection: a preallocated slot (a connection has a fixed set,
/// so issuing a command allocates nothing) whose address is the user data of every libnbd
/// command issued for it. A bio larger than the server's maximum request goes out as several
/// parts; the slot counts the parts still unanswered and keeps the first error. The thread that
/// issues a phase (a submitter or the poll thread) owns the slot until it is issued; libnbd's
/// callbacks (on the poll thread) may answer parts meanwhile, so the count and the error are
/// atomic, and whoever ends the last part hands the slot to the connection.
final class NbdCommand: @unchecked Sendable {
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
    let partsPending = Atomic<Int>(0)
    /// The first part's error (0: none yet).
    private let firstError = Atomic<Int32>(0)
    var error: Int32 { firstError.load(ordering: .acquiring) }
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

    /// Starts a phase: no error yet, and the issuer's own part.
    func startPhase() {
        firstError.store(0, ordering: .relaxed)
        partsPending.store(1, ordering: .releasing)
    }

    /// Counts one more part about to be issued (the issuer's own part keeps the count above 0).
    func partIssued() {
        partsPending.add(1, ordering: .relaxed)
    }

    func partEnded(_ error: Int32) {
        if error != 0 { _ = firstError.compareExchange(expected: 0, desired: error, ordering: .acquiringAndReleasing) }
        if partsPending.subtract(1, ordering: .acquiringAndReleasing).newValue == 0 { connection.commandAnswered(self) }
    }
}

/// libnbd's completion callback: one part answered (error 0 or an errno). Returning 1 retires
/// the command inside libnbd.
private let nbdCommandPartEnded: @convention(c) (UnsafeMutableRawPointer?, UnsafeMutablePointer<Int32>?) -> Int32 = {
    context, error in
    Unmanaged<NbdCommand>.fromOpaque(context!).takeUnretainedValue().partEnded(error?.pointee ?? 0)
    return 1
}
