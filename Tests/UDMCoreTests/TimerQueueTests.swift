import Dispatch
import Synchronization
import UDMCore
import XCTest

final class TimerQueueTests: XCTestCase {
    private let ms: UInt64 = 1_000_000

    /// Collects what fired, in order, with when.
    final class Fired: @unchecked Sendable {
        let lock = ConditionLock()
        var events: [(String, UInt64)] = []

        func add(_ name: String) {
            lock.withLock {
                events.append((name, monotonicNanoseconds()))
                lock.broadcast()
            }
        }

        func wait(for count: Int, seconds: Double = 10) -> [(String, UInt64)] {
            let deadline = monotonicNanoseconds() + UInt64(seconds * 1e9)
            while monotonicNanoseconds() < deadline {
                let done = lock.withLock { events.count >= count }
                if done { break }
                usleep(1000)
            }
            return lock.withLock { events }
        }
    }

    func testFiresInDeadlineOrderAndNeverEarly() {
        let queue = TimerQueue()
        let fired = Fired()
        let start = monotonicNanoseconds()
        let deadlines = ["c": 60 * ms, "a": 20 * ms, "b": 40 * ms, "d": 80 * ms]
        for (name, offset) in deadlines {
            queue.arm(queue.makeTimer { fired.add(name) }, at: start + offset)
        }
        let events = fired.wait(for: 4)
        XCTAssertEqual(events.map(\.0), ["a", "b", "c", "d"])
        for (name, at) in events {
            XCTAssertGreaterThanOrEqual(at, start + deadlines[name]!, "\(name) fired before its deadline")
        }
    }

    func testArmingAgainKeepsTheEarlierDeadline() {
        let queue = TimerQueue()
        let fired = Fired()
        let start = monotonicNanoseconds()
        let timer = queue.makeTimer { fired.add("t") }
        let marker = queue.makeTimer { fired.add("marker") }
        queue.arm(timer, at: start + 10_000 * ms)
        queue.arm(timer, at: start + 30 * ms)        // earlier: moves up
        queue.arm(timer, at: start + 20_000 * ms)    // later: ignored
        queue.arm(marker, at: start + 60 * ms)
        XCTAssertEqual(fired.wait(for: 2).map(\.0), ["t", "marker"])
        XCTAssertFalse(queue.isArmed(timer))
    }

    func testCancelledTimerDoesNotFire() {
        let queue = TimerQueue()
        let fired = Fired()
        let start = monotonicNanoseconds()
        let cancelled = queue.makeTimer { fired.add("cancelled") }
        queue.arm(cancelled, at: start + 20 * ms)
        queue.arm(queue.makeTimer { fired.add("kept") }, at: start + 50 * ms)
        XCTAssertTrue(queue.isArmed(cancelled))
        queue.cancel(cancelled)
        XCTAssertFalse(queue.isArmed(cancelled))
        XCTAssertEqual(fired.wait(for: 1).map(\.0), ["kept"])
        usleep(50_000)
        XCTAssertEqual(fired.wait(for: 1).map(\.0), ["kept"], "the cancelled timer fired")
    }

    func testCallbackCanRearmItself() {
        let queue = TimerQueue()
        let fired = Fired()
        let count = Atomic<Int>(0)
        let box = TimerBox()
        box.timer = queue.makeTimer {
            fired.add("tick")
            if count.add(1, ordering: .relaxed).newValue < 5 {
                queue.arm(box.timer!, at: monotonicNanoseconds() + 2 * 1_000_000)
            }
        }
        queue.arm(box.timer!, at: monotonicNanoseconds())
        XCTAssertEqual(fired.wait(for: 5).count, 5)
        usleep(30_000)
        XCTAssertEqual(fired.wait(for: 5).count, 5, "a timer that was not re-armed fired again")
    }

    /// Many timers armed from several threads in random order all fire, in order.
    func testManyTimersFromManyThreads() {
        let queue = TimerQueue()
        let fired = Fired()
        let start = monotonicNanoseconds() + 300 * ms  // all armed before the first fires
        DispatchQueue.concurrentPerform(iterations: 8) { thread in
            for i in 0..<50 {
                let index = (i * 8 + thread) * 37 % 400
                queue.arm(queue.makeTimer { fired.add(String(index)) }, at: start + UInt64(index) * 100_000)
            }
        }
        let events = fired.wait(for: 400)
        XCTAssertEqual(events.count, 400)
        XCTAssertEqual(events.map { Int($0.0)! }, Array(0..<400))
    }

    func testAfterRunsOnce() {
        let queue = TimerQueue()
        let fired = Fired()
        let start = monotonicNanoseconds()
        queue.after(nanoseconds: 25 * ms) { fired.add("once") }
        let events = fired.wait(for: 1)
        XCTAssertEqual(events.map(\.0), ["once"])
        XCTAssertGreaterThanOrEqual(events[0].1, start + 25 * ms)
    }
}

final class TimerBox: @unchecked Sendable {
    var timer: TimerQueue.Timer?
}
