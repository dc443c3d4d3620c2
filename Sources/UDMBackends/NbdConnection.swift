import CNbd
import Glibc
import Synchronization
import UDMCore

/// One connection to an NBD export, driven by its own poll thread.
///
/// Submitting threads only queue the bio and wake the thread (an eventfd); the poll thread
/// issues each bio as asynchronous libnbd commands (`nbd_aio_*`), waits on the socket in the
/// direction libnbd asks for, and ends the bio from the command's completion. No thread waits
/// for the server on a request's behalf.
///
/// When the connection drops (or answers nothing for the timeout while commands are out),
/// its commands are held, as bios, and the poll thread reconnects with backoff for up to the
/// timeout; a new connection re-issues them (reads and writes at a fixed offset, flushes, trims
/// and zeroings are all safe to repeat), so a write is acknowledged only once a server has
/// acknowledged it. Past the timeout the held bios end with EIO, and later ones fail at once,
/// while the thread keeps trying every second; the first success brings the link back up.
final class NbdConnection: @unchecked Sendable {
    /// Commands one connection has out at once; more bios wait in the queue, in order.
    static let commandSlots = 256

    let uri: String
    private let timeout: UInt64
    /// The export must stay at least this big across reconnects.
    private let sectors: UInt64

    // Shared with submitters and reporters, under `lock`.
    private let lock = ConditionLock()
    private var queue = NbdBioQueue(capacity: commandSlots)
    private var state = NbdLink.State.up
    private var reconnects = 0
    private var lastError = ""
    private var stopping = false

    // The poll thread's own.
    private var handle: NbdHandle?
    private var maxRequestBytes: Int
    private var commands: [NbdCommand] = []
    private var free: NbdCommand?
    private var answered: NbdCommand?
    private var inUse = 0 {
        didSet { commandsOut.store(inUse, ordering: .relaxed) }
    }
    /// `inUse` for reporters.
    private let commandsOut = Atomic<Int>(0)
    /// When the server last answered, or when commands went out to an idle connection.
    private var lastProgress: UInt64 = 0
    private let wakeFD: Int32
    private let pollFDs = UnsafeMutablePointer<pollfd>.allocate(capacity: 2)

    /// Takes over `handle`, already connected, and starts the poll thread.
    init(handle: NbdHandle, uri: String, timeout: UInt64, sectors: UInt64) {
        self.uri = uri
        self.timeout = timeout
        self.sectors = sectors
        self.handle = handle
        maxRequestBytes = Self.requestLimit(handle)
        wakeFD = eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK))
        commands = (0..<Self.commandSlots).map { _ in NbdCommand(connection: self) }
        for command in commands.reversed() {
            command.next = free
            free = command
        }
        startThread { [self] in run() }
    }

    deinit {
        close(wakeFD)
        pollFDs.deallocate()
    }

    var link: (state: NbdLink.State, reconnects: Int, lastError: String, inFlight: Int) {
        let inFlight = commandsOut.load(ordering: .relaxed)
        return lock.withLock { (state, reconnects, lastError, inFlight) }
    }

    /// Queues `bio` for the poll thread; while the link is down it fails at once.
    func submit(_ bio: Bio) {
        lock.lock()
        guard state != .down && !stopping else {
            lock.unlock()
            bio.end(.ioError)
            return
        }
        let wasEmpty = queue.isEmpty
        queue.append(bio)
        lock.unlock()
        if wasEmpty { wake() }
    }

    /// Ends the poll thread (the device is going away, its I/O drained); it closes the handle.
    func stop() {
        lock.withLock { stopping = true }
        wake()
    }

    /// From a command's last part: the poll thread finishes it after libnbd returns.
    func commandAnswered(_ command: NbdCommand) {
        command.next = answered
        answered = command
    }

    private func wake() {
        var one: UInt64 = 1
        _ = write(wakeFD, &one, 8)
    }

    private func drainWakeups() {
        var count: UInt64 = 0
        _ = read(wakeFD, &count, 8)
    }

    private var isStopping: Bool { lock.withLock { stopping } }

    /// The server's maximum request, in whole sectors, at most the NBD default of 32 MiB.
    private static func requestLimit(_ handle: NbdHandle) -> Int {
        max(min(handle.maximumBlock, 32 << 20) & ~511, 512)
    }

    // MARK: the poll thread

    private func run() {
        while !isStopping {
            guard let handle else {
                reconnect()
                continue
            }
            startQueued(on: handle)
            if !finishAnswered(on: handle) {
                connectionLost("the server is shutting down")
                continue
            }
            if handle.isDead {
                connectionLost(NbdHandle.lastError())
                continue
            }
            let direction = nbd_aio_get_direction(handle.raw)
            pollFDs[0] = pollfd(fd: nbd_aio_get_fd(handle.raw),
                                events: Int16((direction & UInt32(LIBNBD_AIO_DIRECTION_READ) != 0 ? POLLIN : 0)
                                              | (direction & UInt32(LIBNBD_AIO_DIRECTION_WRITE) != 0 ? POLLOUT : 0)),
                                revents: 0)
            pollFDs[1] = pollfd(fd: wakeFD, events: Int16(POLLIN), revents: 0)
            // With commands out, wake each second to notice a server that stopped answering.
            guard poll(pollFDs, 2, inUse > 0 ? 1000 : -1) >= 0 || errno == EINTR else {
                connectionLost("poll: \(String(cString: strerror(errno)))")
                continue
            }
            if pollFDs[1].revents != 0 { drainWakeups() }
            let events = Int32(pollFDs[0].revents)
            var failed = false
            if events & (POLLIN | POLLHUP | POLLERR) != 0 { failed = nbd_aio_notify_read(handle.raw) < 0 }
            if !failed && events & POLLOUT != 0 { failed = nbd_aio_notify_write(handle.raw) < 0 }
            if failed || handle.isDead {
                connectionLost(NbdHandle.lastError())
                continue
            }
            if answered != nil {
                lastProgress = monotonicNanoseconds()
            } else if inUse > 0 && monotonicNanoseconds() - lastProgress > timeout {
                connectionLost("no answer from the server for \(timeout / 1_000_000_000) s")
            }
        }
        shutDown()
    }

    /// Gives queued bios free command slots and issues them.
    private func startQueued(on handle: NbdHandle) {
        while let command = free {
            guard let bio = lock.withLock({ queue.popFirst() }) else { return }
            free = command.next
            command.next = nil
            if inUse == 0 { lastProgress = monotonicNanoseconds() }
            inUse += 1
            command.bio = bio
            command.phase = bio.op == .write && bio.flags.contains(.preflush) && handle.canFlush ? .preflush : .data
            issue(command, on: handle)
        }
    }

    /// Ends or advances the commands answered since the last call. Not while the handle is
    /// dead: its commands were answered with ENOTCONN, and are held instead. A command the
    /// server refused because it is shutting down (nbdkit on SIGTERM) is held too; returns
    /// false if there was one, for the caller to drop this connection and make a new one.
    private func finishAnswered(on handle: NbdHandle) -> Bool {
        var serving = true
        while let command = answered, !handle.isDead {
            answered = command.next
            command.next = nil
            let bio = command.bio!
            if command.error == ESHUTDOWN {
                serving = false
                continue
            }
            if command.error == 0 {
                if command.phase == .preflush {
                    command.phase = .data
                    issue(command, on: handle)
                    continue
                }
                if command.phase == .data && bio.op == .write && bio.flags.contains(.fua)
                    && !handle.canFua && handle.canFlush {
                    command.phase = .postflush
                    issue(command, on: handle)
                    continue
                }
            }
            end(command, command.error == 0 ? .ok : BioStatus(errno: command.error))
        }
        return serving
    }

    private func end(_ command: NbdCommand, _ status: BioStatus) {
        let bio = command.bio!
        command.bio = nil
        command.next = free
        free = command
        inUse -= 1
        bio.end(status)
    }

    /// Sends the command's current phase, cut at the server's maximum request. What the
    /// server cannot do ends as the block layer ends it: a flush with no cache to flush
    /// succeeds, a discard fails with EOPNOTSUPP, write-zeroes becomes writes of zeros.
    private func issue(_ command: NbdCommand, on handle: NbdHandle) {
        let bio = command.bio!
        let raw = handle.raw
        let offset = bio.sector << 9
        command.error = 0
        command.partsPending = 1
        func each(_ limit: Int, _ send: (_ done: Int, _ count: Int) -> Int64) {
            var done = 0
            while done < bio.byteCount && command.error == 0 {
                let count = min(limit, bio.byteCount - done)
                command.partsPending += 1
                if send(done, count) < 0 { command.partEnded(Self.failure()) }
                done += count
            }
        }
        let callback = command.callback
        let writes = bio.op == .write || bio.op == .discard || bio.op == .writeZeroes
        switch command.phase {
        case .preflush, .postflush:
            command.partsPending += 1
            if nbd_aio_flush(raw, callback, 0) < 0 { command.partEnded(Self.failure()) }
        case .data where writes && handle.readOnly:
            command.error = EROFS
        case .data:
            switch bio.op {
            case .read:
                each(maxRequestBytes) { done, count in
                    nbd_aio_pread(raw, bio.buffer! + done, count, offset + UInt64(done), callback, 0)
                }
            case .write:
                let flags = bio.flags.contains(.fua) && handle.canFua ? UInt32(LIBNBD_CMD_FLAG_FUA) : 0
                each(maxRequestBytes) { done, count in
                    nbd_aio_pwrite(raw, bio.buffer! + done, count, offset + UInt64(done), callback, flags)
                }
            case .flush:
                if handle.canFlush {
                    command.partsPending += 1
                    if nbd_aio_flush(raw, callback, 0) < 0 { command.partEnded(Self.failure()) }
                }
            case .discard:
                guard handle.canTrim else {
                    command.error = EOPNOTSUPP
                    break
                }
                each(maxRequestBytes) { done, count in
                    nbd_aio_trim(raw, UInt64(count), offset + UInt64(done), callback, 0)
                }
            case .writeZeroes:
                if handle.canZero {
                    each(maxRequestBytes) { done, count in
                        nbd_aio_zero(raw, UInt64(count), offset + UInt64(done), callback, 0)
                    }
                } else {
                    each(min(maxRequestBytes, nbdZeroBufferBytes)) { done, count in
                        nbd_aio_pwrite(raw, nbdZeroBuffer, count, offset + UInt64(done), callback, 0)
                    }
                }
            }
        }
        command.partEnded(0)
    }

    /// The errno of a libnbd call that refused a command (EIO if it gave none).
    private static func failure() -> Int32 {
        let error = nbd_get_errno()
        return error != 0 ? error : EIO
    }

    /// The connection dropped or stalled: drop the handle (closed once the poll loop lets go
    /// of it); `reconnect` holds its commands for a new one.
    private func connectionLost(_ cause: String) {
        handle = nil
        lock.withLock {
            state = .reconnecting
            lastError = cause
        }
    }

    /// Tries to connect again with backoff; re-issues the held commands on success. Gives up
    /// holding after the timeout (fails them with EIO), then keeps trying once a second.
    private func reconnect() {
        // The old handle is closed by now, and libnbd may have answered its commands (with
        // errors) as it went: forget those answers, every command in use is held afresh.
        answered = nil
        for command in commands where command.bio != nil {
            command.next = nil
            command.partsPending = 0
            command.error = 0
            // A write's FUA stands in for a flush that may not have reached the server.
            if command.phase == .postflush { command.phase = .data }
        }
        let deadline = monotonicNanoseconds() + timeout
        var delay: UInt64 = 50_000_000
        while !isStopping {
            let down = link.state == .down
            let attemptDeadline = down ? monotonicNanoseconds() + 5_000_000_000 : deadline
            do throws(NbdError) {
                let fresh = try NbdHandle(uri: uri, deadline: attemptDeadline)
                guard fresh.bytes >> 9 >= sectors else {
                    throw NbdError(uri, "the export shrank to \(fresh.bytes) bytes; the table needs \(sectors) sectors")
                }
                guard fresh.minimumBlock <= 512 else {
                    throw NbdError(uri, "the export now needs requests aligned to \(fresh.minimumBlock) bytes")
                }
                handle = fresh
                maxRequestBytes = Self.requestLimit(fresh)
                lock.withLock {
                    state = .up
                    reconnects += 1
                }
                lastProgress = monotonicNanoseconds()
                for command in commands where command.bio != nil { issue(command, on: fresh) }
                return
            } catch {
                lock.withLock { lastError = error.cause }
            }
            if !down && monotonicNanoseconds() >= deadline {
                giveUp()
                delay = 1_000_000_000
            }
            sleep(nanoseconds: delay)
            delay = min(delay * 2, 1_000_000_000)
        }
    }

    /// Reconnecting timed out: held and queued bios end with EIO; later ones fail at once.
    private func giveUp() {
        var failed = NbdBioQueue(capacity: 1)
        lock.withLock {
            state = .down
            swap(&failed, &queue)
            queue = NbdBioQueue(capacity: Self.commandSlots)
        }
        for command in commands where command.bio != nil { end(command, .ioError) }
        while let bio = failed.popFirst() { bio.end(.ioError) }
    }

    /// Sleeps without missing a stop (submissions wake it too; it sleeps on).
    private func sleep(nanoseconds: UInt64) {
        let until = monotonicNanoseconds() + nanoseconds
        while !isStopping {
            let now = monotonicNanoseconds()
            guard now < until else { return }
            pollFDs[0] = pollfd(fd: wakeFD, events: Int16(POLLIN), revents: 0)
            if poll(pollFDs, 1, Int32((until - now) / 1_000_000 + 1)) > 0 { drainWakeups() }
        }
    }

    /// The device is gone: nothing should be left, but whatever is ends with EIO.
    private func shutDown() {
        if let handle, !handle.isDead { _ = nbd_aio_disconnect(handle.raw, 0) }
        handle = nil
        for command in commands where command.bio != nil { end(command, .ioError) }
        while let bio = lock.withLock({ queue.popFirst() }) { bio.end(.ioError) }
        commands = []
        free = nil
    }
}

/// Zeros written where a server cannot write zeroes itself (never written to).
nonisolated(unsafe) private let nbdZeroBuffer = UnsafeMutableRawPointer(calloc(1, nbdZeroBufferBytes)!)
private let nbdZeroBufferBytes = 1 << 20
