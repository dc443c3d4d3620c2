import UDMCore

/// `delay <dev> <offset> <delay ms> [<write dev> <write offset> <write delay ms> [<flush dev>
/// <flush offset> <flush delay ms>]]`: a linear mapping that holds each I/O for a fixed time
/// before passing it down (dm-delay.c, target 1.5).
///
/// Three classes: reads; writes and discards; flushes. With 3 arguments all use the first set,
/// with 6 flushes use the write set. A delay of 0 passes a class straight through. Held clones
/// wait on one FIFO per class (each class has one delay, so a FIFO is in deadline order) and one
/// timer of the daemon's `TimerQueue`, armed for the earliest deadline; when it fires, the
/// target's own worker thread submits what is due (dm: its per-target workqueue), so one delay
/// disk's burst never holds up the timer, nor the other disks' timers. Nothing sleeps on the
/// submitting thread. Presuspend stops
/// delaying and sends everything held down at once, so a suspend (or reload) never waits out
/// the delays; resume delays again.
/// Table: the sets given (`<dev> <offset> <ms>`, 1 to 3 of them). Status: `<reads> <writes>
/// <flushes>` held now. One clone for flush and discard; write-zeroes not supported (as dm).
public final class DelayTarget: Target, @unchecked Sendable {
    public static let name = "delay"
    public static let version = (1, 5, 0)

    private struct Class {
        let device: BlockDevice
        let deviceName: String
        let offset: UInt64
        let milliseconds: UInt32
        var nanoseconds: UInt64 { UInt64(milliseconds) * 1_000_000 }
    }

    /// Held clones of one class, linked through their per-bio data.
    private struct Queue {
        var head: UnsafeMutableRawPointer?
        var tail: UnsafeMutableRawPointer?
        var count: UInt32 = 0
    }

    private struct Held {
        var queues: [3 of Queue] = .init(repeating: Queue())
        var mayDelay = true
    }

    private static let read = 0, write = 1, flush = 2
    // Per-bio data: next held clone (an unmanaged Bio, retained while held) @0, deadline @8.
    private static let nextOffset = 0, deadlineOffset = 8

    private let context: TargetContext
    /// read, write, flush: the sets given, the last one repeated.
    private let classes: [Class]
    private let given: Int
    private let timers: TimerQueue
    private let lock = ConditionLock()
    private var held = Held()
    /// Set once, at the end of init (their actions refer back to the target).
    private var timer: TimerQueue.Timer!
    private var submitter: WorkerThread!

    public init(arguments: [String], context: TargetContext) throws {
        guard [3, 6, 9].contains(arguments.count) else {
            throw TargetError("requires exactly 3, 6 or 9 arguments: <dev> <offset> <delay ms> [<write dev> <write offset> <write delay ms> [<flush dev> <flush offset> <flush delay ms>]], got \(arguments.count)")
        }
        var classes: [Class] = []
        for (index, what) in ["read", "write", "flush"].enumerated() where index < arguments.count / 3 {
            let first = 3 * index
            let offset = try parseSectors(arguments[first + 1], argument: first + 2, what: "\(what) device sector")
            guard let milliseconds = UInt32(arguments[first + 2]) else {
                throw TargetError("invalid \(what) delay '\(arguments[first + 2])': milliseconds, 0-\(UInt32.max)", argument: first + 3)
            }
            let device = try context.openDevice(arguments[first], argument: first + 1, offset: offset, sectors: context.length)
            classes.append(Class(device: device, deviceName: arguments[first], offset: offset, milliseconds: milliseconds))
        }
        given = classes.count
        while classes.count < 3 { classes.append(classes.last!) }
        self.classes = classes
        self.context = context
        timers = context.services.timers
        submitter = WorkerThread { [weak self] in self?.sendDue() }
        timer = timers.makeTimer { [weak self] in self?.submitter.kick() }
    }

    deinit {
        timers.cancel(timer)
        submitter.stop()
    }

    public var perBioDataSize: Int { 16 }
    public var writeZeroesBios: Int { 0 }
    public var discardZeroes: Bool { classes[Self.write].device.discardZeroes }

    public func map(_ bio: Bio) -> MapResult {
        let index = bio.op == .read ? Self.read : bio.op == .flush ? Self.flush : Self.write
        let target = classes[index]
        if bio.op != .flush {
            bio.sector = target.offset + context.offset(of: bio.sector)
        }
        bio.device = target.device
        guard target.milliseconds > 0 else { return .remapped(to: target.device) }
        let data = bio.perBioData!
        // The deadline is taken under the lock, so each FIFO stays in deadline order.
        let armAt: UInt64? = lock.withLock {
            guard held.mayDelay else { return nil }
            let deadline = monotonicNanoseconds() + target.nanoseconds
            data.storeBytes(of: deadline, toByteOffset: Self.deadlineOffset, as: UInt64.self)
            data.storeBytes(of: nil, toByteOffset: Self.nextOffset, as: UnsafeMutableRawPointer?.self)
            let link = Unmanaged.passRetained(bio).toOpaque()
            let wasEmpty = held.queues[index].head == nil
            if let tail = held.queues[index].tail {
                Self.data(tail).storeBytes(of: link, toByteOffset: Self.nextOffset, as: UnsafeMutableRawPointer?.self)
            } else {
                held.queues[index].head = link
            }
            held.queues[index].tail = link
            held.queues[index].count += 1
            // A non-empty queue's head is earlier, and the timer is armed for it (or sendDue
            // is running and will arm for what is left after it takes the lock).
            return wasEmpty ? deadline : 0
        }
        guard let armAt else { return .remapped(to: target.device) }
        if armAt > 0 { timers.arm(timer, at: armAt) }
        return .submitted
    }

    /// On the submitter, after the timer fired: submit every held clone whose deadline has
    /// passed, re-arm for the rest.
    private func sendDue() {
        let now = monotonicNanoseconds()
        var due: [3 of UnsafeMutableRawPointer?] = .init(repeating: nil)
        let next: UInt64? = lock.withLock {
            var earliest: UInt64?
            for index in 0..<3 {
                due[index] = Self.take(from: &held.queues[index], dueBy: now)
                if let head = held.queues[index].head {
                    let deadline = Self.data(head).load(fromByteOffset: Self.deadlineOffset, as: UInt64.self)
                    earliest = min(earliest ?? deadline, deadline)
                }
            }
            return earliest
        }
        if let next { timers.arm(timer, at: next) }
        for index in 0..<3 { submitChain(due[index]) }
    }

    /// Cuts the clones due by `deadline` (all, for `.max`) off the front of `queue`; returns the
    /// chain, still linked.
    private static func take(from queue: inout Queue, dueBy deadline: UInt64) -> UnsafeMutableRawPointer? {
        let first = queue.head
        var last: UnsafeMutableRawPointer?
        var cursor = queue.head
        while let link = cursor, Self.data(link).load(fromByteOffset: Self.deadlineOffset, as: UInt64.self) <= deadline {
            last = link
            cursor = Self.data(link).load(fromByteOffset: Self.nextOffset, as: UnsafeMutableRawPointer?.self)
            queue.count -= 1
        }
        guard let last else { return nil }
        Self.data(last).storeBytes(of: nil, toByteOffset: Self.nextOffset, as: UnsafeMutableRawPointer?.self)
        queue.head = cursor
        if cursor == nil { queue.tail = nil }
        return first
    }

    private func submitChain(_ chain: UnsafeMutableRawPointer?) {
        var cursor = chain
        while let link = cursor {
            let bio = Unmanaged<Bio>.fromOpaque(link).takeRetainedValue()
            // Read the link first: once submitted, the clone may end and be reused.
            cursor = bio.perBioData!.load(fromByteOffset: Self.nextOffset, as: UnsafeMutableRawPointer?.self)
            bio.submit()
        }
    }

    private static func data(_ link: UnsafeMutableRawPointer) -> UnsafeMutableRawPointer {
        Unmanaged<Bio>.fromOpaque(link).takeUnretainedValue().perBioData!
    }

    /// Stop delaying and send down everything held, so the suspend's wait for in-flight I/O
    /// ends without waiting out the delays (dm: delay_presuspend).
    public func presuspend() {
        var all: [3 of UnsafeMutableRawPointer?] = .init(repeating: nil)
        lock.withLock {
            held.mayDelay = false
            for index in 0..<3 { all[index] = Self.take(from: &held.queues[index], dueBy: .max) }
        }
        timers.cancel(timer)
        for index in 0..<3 { submitChain(all[index]) }
    }

    public func resume() {
        lock.withLock { held.mayDelay = true }
    }

    public func status(_ kind: StatusKind) -> String {
        switch kind {
        case .info:
            return lock.withLock { "\(held.queues[0].count) \(held.queues[1].count) \(held.queues[2].count)" }
        case .table:
            return classes[0..<given].map { "\($0.deviceName) \($0.offset) \($0.milliseconds)" }.joined(separator: " ")
        }
    }
}
