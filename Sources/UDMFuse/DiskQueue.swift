import Glibc
import UDMCore

/// The FUSE requests of one disk (dm: a disk's request queue): at most `depth` of them are in
/// the disk at once, the rest wait here in arrival order. A request that waits, or that the
/// disk holds (suspended, delayed, copying), occupies a slot of this disk only: other disks'
/// requests and the libfuse workers go on. Requests start and finish on whichever thread
/// submits or ends them; nothing here waits.
final class DiskQueue: @unchecked Sendable {
    let pool: RequestPool
    let depth: Int
    private let lock = ConditionLock()
    // Guarded by lock.
    private var active = 0
    private var exclusiveActive = false
    private var waitingHead: FuseRequest?
    private var waitingTail: FuseRequest?
    private var closed = false

    init(pool: RequestPool, depth: Int) {
        precondition(depth >= 1, "a disk queue needs a depth of at least 1")
        self.pool = pool
        self.depth = depth
    }

    /// Queues a prepared request; starts it (and whatever else may start) if the disk has room.
    func submit(_ request: FuseRequest) {
        lock.lock()
        if closed {
            lock.unlock()
            request.refuse(error: EIO)
            return
        }
        request.next = nil
        if let tail = waitingTail { tail.next = request } else { waitingHead = request }
        waitingTail = request
        let ready = takeReady()
        lock.unlock()
        start(ready)
    }

    /// A started request has been answered: its slot goes to the next waiting one.
    func finished(_ request: FuseRequest) {
        lock.lock()
        active -= 1
        if request.exclusive { exclusiveActive = false }
        let ready = closed ? nil : takeReady()
        lock.unlock()
        request.release()
        start(ready)
    }

    /// The disk is going away: waiting requests fail with EIO, and so will new ones. Requests
    /// already in the disk end as the disk ends them (the registry fails held I/O).
    func close() {
        lock.lock()
        closed = true
        var request = waitingHead
        waitingHead = nil
        waitingTail = nil
        lock.unlock()
        while let r = request {
            request = r.next
            r.next = nil
            r.refuse(error: EIO)
        }
    }

    /// Requests now in the disk, and waiting for room (for status).
    var counts: (active: Int, waiting: Int) {
        lock.withLock {
            var waiting = 0
            var request = waitingHead
            while let r = request {
                waiting += 1
                request = r.next
            }
            return (active, waiting)
        }
    }

    /// With lock held: unlinks the requests that may start now, in order, and counts them in.
    /// The first one that may not start stops the scan, so requests never overtake each other.
    private func takeReady() -> FuseRequest? {
        var head: FuseRequest?
        var tail: FuseRequest?
        while let request = waitingHead, active < depth, !(request.exclusive && exclusiveActive) {
            waitingHead = request.next
            if waitingHead == nil { waitingTail = nil }
            request.next = nil
            active += 1
            if request.exclusive { exclusiveActive = true }
            if let t = tail { t.next = request } else { head = request }
            tail = request
        }
        return head
    }

    private func start(_ chain: FuseRequest?) {
        var request = chain
        while let r = request {
            request = r.next
            r.next = nil
            r.start()
        }
    }
}
