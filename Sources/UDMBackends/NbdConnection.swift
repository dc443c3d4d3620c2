import CNbd
import Glibc
import Synchronization
import UDMCore

/// One connection to an NBD export: submitting threads issue commands, a poll thread answers.
///
/// A bio submitted while the link is up, nothing waits before it and a command slot is free is
/// issued by the submitting thread itself (libnbd handles are thread-safe, and sending a
/// command does not wait for the server: the socket is non-blocking). Otherwise it is queued
/// for the poll thread, woken by an eventfd. The poll thread waits on the socket in the
/// direction libnbd asks for, lets libnbd read the replies (which runs the completion
/// callbacks there), and ends each bio from its command's completion. No thread waits for the
/// server on a request's behalf.
///
/// When the connection drops (or answers nothing for the timeout while commands are out),
/// its commands are held, as bios, and the poll thread reconnects with backoff for up to the
/// timeout; a new connection re-issues them (reads and writes at a fixed offset, flushes, trims
/// and zeroings are all safe to repeat), so a write is acknowledged only once a server has
/// acknowledged it. Past the timeout the held bios end with EIO, and later ones fail at once,
/// while the thread keeps trying every second; the first success brings the link back up.
///
/// Lock order: libnbd's handle lock, then `lock` (a callback may take it); nothing calls into
/// libnbd while holding `lock`.
final class NbdConnection: @unchecked Sendable {
    /// Commands one connection has out at once; more bios wait in the queue, in order.
    static let commandSlots = 256

    let uri: String
    private let timeout: UInt64
    /// The export must stay at least this big across reconnects.
    private let sectors: UInt64

    // Shared with submitters and reporters, under `lock`. The poll thread alone changes
    // `handle` (under the lock) and may read it without.
    private let lock = ConditionLock()
    private var queue = NbdBioQueue(capacity: commandSlots)
    private var state = NbdLink.State.up
    private var reconnects = 0
    private var lastError = ""
    private var stopping = false
    private var handle: NbdHandle?
    private var free: NbdCommand?
    private var inUse = 0 {
        didSet { commandsOut.store(inUse, ordering: .relaxed) }
    }
    /// Submitters between taking a slot and finishing its issue: the poll thread lets go of a
    /// handle, or re-issues held commands, only once this is 0 and the link is not up.
    private var issuing = 0
    /// Commands whose last part ended off the poll thread, for it to finish.
    private var answeredElsewhere: NbdCommand?
    /// The poll thread is in libnbd reading replies (holding the handle's lock): a submitter
    /// queues its bio rather than wait for that lock, and the poll thread takes the queue
    /// before it polls again, so no wake-up is needed either.
    private var readingReplies = false

    // The poll thread's own.
    private var commands: [NbdCommand] = []
    private var answered: NbdCommand?
    private let pollThread = Atomic<UInt>(0)

    /// `inUse` for reporters and the poll thread's stall check.
    private let commandsOut = Atomic<Int>(0)
    /// When the server last answered, or when commands went out to an idle connection.
    private let lastProgress = Atomic<UInt64>(0)
    private let wakeFD: Int32
    private let pollFDs = UnsafeMutablePointer<pollfd>.allocate(capacity: 2)

    /// Takes over `handle`, already connected, and starts the poll thread.
    init(handle: NbdHandle, uri: String, timeout: UInt64, sectors: UInt64) {
        self.uri = uri
        self.timeout = timeout
        self.sectors = sectors
        self.handle = handle
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

    /// Issues `bio` on this thread when it can go at once, else queues it for the poll
    /// thread; while the link is down it fails at once.
    func submit(_ bio: Bio) {
        lock.lock()
        guard state != .down && !stopping else {
            lock.unlock()
            bio.end(.ioError)
            return
        }
        guard state == .up, queue.isEmpty, !readingReplies, let current = handle, let command = free else {
            let wasEmpty = queue.isEmpty
            queue.append(bio)
            let pollerWillLook = readingReplies
            lock.unlock()
            if wasEmpty && !pollerWillLook { wake() }
            return
        }
        free = command.next
        command.next = nil
        take(command, for: bio, canFlush: current.canFlush)
        issuing += 1
        // The poll thread keeps the handle until `issuing` is back to 0: no reference counting
        // here, so this thread never closes a handle.
        let unretained = Unmanaged.passUnretained(current)
        lock.unlock()
        let wantsWrite = unretained._withUnsafeGuaranteedRef { handle in
            issue(command, on: handle)
            return nbd_aio_get_direction(handle.raw) & UInt32(LIBNBD_AIO_DIRECTION_WRITE) != 0
        }
        lock.lock()
        issuing -= 1
        if issuing == 0 && (state != .up || stopping) { lock.broadcast() }
        lock.unlock()
        // libnbd could not send it all at once: the poll thread waits for room.
        if wantsWrite { wake() }
    }

    /// Ends the poll thread (the device is going away, its I/O drained); it closes the handle.
    func stop() {
        lock.withLock { stopping = true }
        wake()
    }

    /// A command's last part ended: on the poll thread (libnbd's callbacks), it is finished
    /// after libnbd returns; anywhere else, the poll thread is told.
    func commandAnswered(_ command: NbdCommand) {
        if pthread_self() == pollThread.load(ordering: .relaxed) {
            command.next = answered
            answered = command
            return
        }
        lock.withLock {
            command.next = answeredElsewhere
            answeredElsewhere = command
        }
        wake()
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

    /// Gives `bio` a slot, under the lock.
    private func take(_ command: NbdCommand, for bio: Bio, canFlush: Bool) {
        if inUse == 0 { lastProgress.store(monotonicNanoseconds(), ordering: .relaxed) }
        inUse += 1
        command.bio = bio
        command.phase = bio.op == .write && bio.flags.contains(.preflush) && canFlush ? .preflush : .data
    }

    // MARK: the poll thread

    private func run() {
        pollThread.store(pthread_self(), ordering: .relaxed)
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
            // Wake each second to notice a server that stopped answering: submitters issue
            // commands without telling this thread.
            guard poll(pollFDs, 2, 1000) >= 0 || errno == EINTR else {
                connectionLost("poll: \(String(cString: strerror(errno)))")
                continue
            }
            if pollFDs[1].revents != 0 { drainWakeups() }
            let events = Int32(pollFDs[0].revents)
            var failed = false
            if events & (POLLIN | POLLHUP | POLLERR) != 0 {
                lock.withLock { readingReplies = true }
                failed = nbd_aio_notify_read(handle.raw) < 0
                lock.withLock { readingReplies = false }
            }
            if !failed && events & POLLOUT != 0 { failed = nbd_aio_notify_write(handle.raw) < 0 }
            if failed || handle.isDead {
                connectionLost(NbdHandle.lastError())
                continue
            }
            let now = monotonicNanoseconds()
            if answered != nil {
                lastProgress.store(now, ordering: .relaxed)
            } else if commandsOut.load(ordering: .relaxed) > 0 {
                let since = lastProgress.load(ordering: .relaxed)
                if now > since && now - since > timeout {
                    connectionLost("no answer from the server for \(timeout / 1_000_000_000) s")
                }
            }
        }
        shutDown()
    }

    /// Gives queued bios free command slots and issues them, and takes over the commands
    /// answered off this thread.
    private func startQueued(on handle: NbdHandle) {
        var elsewhere: NbdCommand?
        while true {
            let next: NbdCommand? = lock.withLock {
                if elsewhere == nil {
                    elsewhere = answeredElsewhere
                    answeredElsewhere = nil
                }
                guard let command = free, let bio = queue.popFirst() else { return nil }
                free = command.next
                command.next = nil
                take(command, for: bio, canFlush: handle.canFlush)
                return command
            }
            guard let command = next else { break }
            issue(command, on: handle)
        }
        while let command = elsewhere {
            elsewhere = command.next
            command.next = answered
            answered = command
        }
    }

    /// Ends or advances the commands answered since the last call. Not while the handle is
    /// dead: its commands were answered with ENOTCONN, and are held instead. A command the
    /// server refused because it is shutting down (nbdkit on SIGTERM) is held too; returns
    /// false if there was one, for the caller to drop this connection and make a new one.
    private func finishAnswered(on handle: NbdHandle) -> Bool {
        var serving = true
        // libnbd answers every command with ENOTCONN as a handle dies, and may do so within
        // an issue below: checked again after each.
        var dead = handle.isDead
        while let command = answered, !dead {
            answered = command.next
            command.next = nil
            let bio = command.bio!
            let error = command.error
            if error == ESHUTDOWN {
                serving = false
                continue
            }
            if error == 0 {
                if command.phase == .preflush {
                    command.phase = .data
                    issue(command, on: handle)
                    dead = handle.isDead
                    continue
                }
                if command.phase == .data && bio.op == .write && bio.flags.contains(.fua)
                    && !handle.canFua && handle.canFlush {
                    command.phase = .postflush
                    issue(command, on: handle)
                    dead = handle.isDead
                    continue
                }
            }
            end(command, error == 0 ? .ok : BioStatus(errno: error))
        }
        return serving
    }

    private func end(_ command: NbdCommand, _ status: BioStatus) {
        let bio = command.bio!
        command.bio = nil
        lock.withLock {
            command.next = free
            free = command
            inUse -= 1
        }
        bio.end(status)
    }

    /// Sends the command's current phase, cut at the server's maximum request. What the
    /// server cannot do ends as the block layer ends it: a flush with no cache to flush
    /// succeeds, a discard fails with EOPNOTSUPP, write-zeroes becomes writes of zeros.
    private func issue(_ command: NbdCommand, on handle: NbdHandle) {
        let bio = command.bio!
        let raw = handle.raw
        let offset = bio.sector << 9
        let limit = handle.maximumRequest
        command.startPhase()
        func each(_ limit: Int, _ send: (_ done: Int, _ count: Int) -> Int64) {
            var done = 0
            while done < bio.byteCount {
                let count = min(limit, bio.byteCount - done)
                command.partIssued()
                if send(done, count) < 0 {
                    command.partEnded(Self.failure())
                    return
                }
                done += count
            }
        }
        func flush() {
            command.partIssued()
            if nbd_aio_flush(raw, command.callback, 0) < 0 { command.partEnded(Self.failure()) }
        }
        let callback = command.callback
        let writes = bio.op == .write || bio.op == .discard || bio.op == .writeZeroes
        switch command.phase {
        case .preflush, .postflush:
            flush()
        case .data where writes && handle.readOnly:
            command.partIssued()
            command.partEnded(EROFS)
        case .data:
            switch bio.op {
            case .read:
                each(limit) { done, count in
                    nbd_aio_pread(raw, bio.buffer! + done, count, offset + UInt64(done), callback, 0)
                }
            case .write:
                let flags = bio.flags.contains(.fua) && handle.canFua ? UInt32(LIBNBD_CMD_FLAG_FUA) : 0
                each(limit) { done, count in
                    nbd_aio_pwrite(raw, bio.buffer! + done, count, offset + UInt64(done), callback, flags)
                }
            case .flush:
                if handle.canFlush { flush() }
            case .discard:
                guard handle.canTrim else {
                    command.partIssued()
                    command.partEnded(EOPNOTSUPP)
                    break
                }
                each(limit) { done, count in
                    nbd_aio_trim(raw, UInt64(count), offset + UInt64(done), callback, 0)
                }
            case .writeZeroes:
                if handle.canZero {
                    each(limit) { done, count in
                        nbd_aio_zero(raw, UInt64(count), offset + UInt64(done), callback, 0)
                    }
                } else {
                    each(min(limit, nbdZeroBufferBytes)) { done, count in
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

    /// The connection dropped or stalled: no more commands go out on this handle; `reconnect`
    /// lets go of it and holds its commands for a new one.
    private func connectionLost(_ cause: String) {
        lock.withLock {
            state = .reconnecting
            lastError = cause
        }
        releaseHandle()
    }

    /// Waits for submitters still issuing on the handle, then drops it (closing it on this
    /// thread: libnbd may answer its commands with errors as it closes).
    private func releaseHandle() {
        let old = lock.waitUntil({ issuing == 0 }) {
            let old = handle
            handle = nil
            return old
        }
        _ = old
    }

    /// Tries to connect again with backoff; re-issues the held commands on success. Gives up
    /// holding after the timeout (fails them with EIO), then keeps trying once a second.
    private func reconnect() {
        // The old handle is closed by now, and libnbd may have answered its commands (with
        // errors) as it went: forget those answers, every command in use is held afresh.
        answered = nil
        lock.withLock { answeredElsewhere = nil }
        for command in commands where command.bio != nil {
            command.next = nil
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
                lastProgress.store(monotonicNanoseconds(), ordering: .relaxed)
                // Held commands go out before submitters may issue on the new handle.
                for command in commands where command.bio != nil { issue(command, on: fresh) }
                lock.withLock {
                    handle = fresh
                    state = .up
                    reconnects += 1
                }
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
        releaseHandle()
        for command in commands where command.bio != nil { end(command, .ioError) }
        while let bio = lock.withLock({ queue.popFirst() }) { bio.end(.ioError) }
        commands = []
        lock.withLock { free = nil }
    }
}

/// Zeros written where a server cannot write zeroes itself (never written to).
nonisolated(unsafe) private let nbdZeroBuffer = UnsafeMutableRawPointer(calloc(1, nbdZeroBufferBytes)!)
private let nbdZeroBufferBytes = 1 << 20
