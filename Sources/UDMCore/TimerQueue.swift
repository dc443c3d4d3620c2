import Glibc

/// Nanoseconds on the monotonic clock (CLOCK_MONOTONIC: never steps, not affected by date
/// changes). A vDSO call: cheap enough for the I/O path.
@inline(__always)
public func monotonicNanoseconds() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return UInt64(now.tv_sec) &* 1_000_000_000 &+ UInt64(now.tv_nsec)
}

/// Runs callbacks at deadlines on one thread of its own (dm: the kernel timers), so nothing
/// ever sleeps on a FUSE worker. Callbacks should be short: one that has I/O to do hands it to
/// a context of its own (the delay target kicks its `WorkerThread`, as dm-delay its workqueue).
///
/// A user makes a `Timer` once (its callback is fixed) and arms it as often as it likes; arming
/// never allocates once the queue has room for every timer, so a target can arm per bio. Timers
/// sit in a binary min-heap by deadline; each timer knows its heap slot, so re-arming and
/// cancelling are O(log n). Callbacks run on the queue's thread without the lock held; a
/// callback may arm timers (its own included). The thread starts with the first arm.
public final class TimerQueue: @unchecked Sendable {
    public final class Timer: @unchecked Sendable {
        fileprivate let action: @Sendable () -> Void
        fileprivate var deadline: UInt64 = 0
        /// Slot in the heap, or -1 when not armed.
        fileprivate var slot = -1

        fileprivate init(_ action: @escaping @Sendable () -> Void) { self.action = action }
    }

    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let condition: UnsafeMutablePointer<pthread_cond_t>
    private var heap: [Timer] = []
    private var started = false

    public init() {
        mutex = .allocate(capacity: 1)
        condition = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
        // Timed waits measure against the monotonic clock, like the deadlines.
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(condition, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
        condition.deallocate()
    }

    /// A timer that runs `action` each time it fires. Not armed.
    public func makeTimer(_ action: @escaping @Sendable () -> Void) -> Timer {
        Timer(action)
    }

    /// Fires `timer` at `deadline` (monotonic nanoseconds) or earlier: an armed timer keeps the
    /// earlier of its deadline and this one (dm-delay's queue_timeout rule).
    public func arm(_ timer: Timer, at deadline: UInt64) {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        if !started {
            started = true
            startThread { [self] in run() }
        }
        if timer.slot >= 0 {
            guard deadline < timer.deadline else { return }
            timer.deadline = deadline
            siftUp(timer.slot)
        } else {
            timer.deadline = deadline
            timer.slot = heap.count
            heap.append(timer)
            siftUp(timer.slot)
        }
        // Only a new earliest deadline changes how long the thread should sleep.
        if heap[0] === timer { pthread_cond_signal(condition) }
    }

    /// Disarms `timer`; a no-op if it is not armed. A callback already running is not stopped.
    public func cancel(_ timer: Timer) {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        guard timer.slot >= 0 else { return }
        remove(at: timer.slot)
    }

    /// Whether `timer` is waiting to fire.
    public func isArmed(_ timer: Timer) -> Bool {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return timer.slot >= 0
    }

    /// Runs `action` once, `nanoseconds` from now (allocates a timer: not for the I/O path).
    public func after(nanoseconds: UInt64, _ action: @escaping @Sendable () -> Void) {
        arm(makeTimer(action), at: monotonicNanoseconds() &+ nanoseconds)
    }

    private func run() {
        pthread_mutex_lock(mutex)
        while true {
            guard let first = heap.first else {
                pthread_cond_wait(condition, mutex)
                continue
            }
            let now = monotonicNanoseconds()
            if first.deadline > now {
                var until = timespec(tv_sec: Int(first.deadline / 1_000_000_000),
                                     tv_nsec: Int(first.deadline % 1_000_000_000))
                pthread_cond_timedwait(condition, mutex, &until)
                continue
            }
            remove(at: 0)
            pthread_mutex_unlock(mutex)
            first.action()
            pthread_mutex_lock(mutex)
        }
    }

    // MARK: the heap (called with the mutex held)

    private func remove(at slot: Int) {
        let timer = heap[slot]
        let last = heap.removeLast()
        timer.slot = -1
        guard slot < heap.count else { return }
        heap[slot] = last
        last.slot = slot
        siftUp(slot)
        siftDown(last.slot)
    }

    private func siftUp(_ start: Int) {
        var slot = start
        let timer = heap[slot]
        while slot > 0 {
            let parent = (slot - 1) / 2
            guard heap[parent].deadline > timer.deadline else { break }
            heap[slot] = heap[parent]
            heap[slot].slot = slot
            slot = parent
        }
        heap[slot] = timer
        timer.slot = slot
    }

    private func siftDown(_ start: Int) {
        var slot = start
        let timer = heap[slot]
        while true {
            var child = 2 * slot + 1
            guard child < heap.count else { break }
            if child + 1 < heap.count && heap[child + 1].deadline < heap[child].deadline { child += 1 }
            guard heap[child].deadline < timer.deadline else { break }
            heap[slot] = heap[child]
            heap[slot].slot = slot
            slot = child
        }
        heap[slot] = timer
        timer.slot = slot
    }
}
