import Glibc
import UDMCore
import UDMTargets
import UDMTestSupport
import XCTest

final class DelayTargetTests: XCTestCase {
    let reads = MemoryDevice(name: "/r", sectors: 256)
    let writes = MemoryDevice(name: "/w", sectors: 256)
    let flushes = MemoryDevice(name: "/f", sectors: 256)

    private func delay(_ arguments: String) throws -> MappedDevice {
        try makeDevice("0 64 delay \(arguments)", devices: [reads, writes, flushes])
    }

    private func rejected(_ arguments: String) -> String {
        rejection("0 64 delay \(arguments)", devices: [reads, writes, flushes])
    }

    /// A bio submitted without waiting; tells when it has ended.
    final class Pending: BioCompletion, @unchecked Sendable {
        let bio: Bio
        let buffer: TestBuffer?
        private let lock = ConditionLock()
        private var ended = false

        init(_ op: BioOp, sector: UInt64 = 0, sectors: UInt64 = 1) {
            buffer = op == .read || op == .write ? TestBuffer(sectors: Int(sectors), seed: 1) : nil
            bio = Bio(op: op, sector: sector, sectors: op == .flush ? 0 : sectors, buffer: buffer?.pointer)
        }

        func start(on device: BlockDevice) -> Pending {
            bio.completion = self
            bio.submit(to: device)
            return self
        }

        func bioCompleted(_ bio: Bio) { lock.withLock { ended = true; lock.broadcast() } }

        var hasEnded: Bool { lock.withLock { ended } }

        /// Waits up to `seconds` for the end; the bio's status, or nil if it has not ended.
        func wait(seconds: Double = 20) -> BioStatus? {
            let deadline = monotonicNanoseconds() + UInt64(seconds * 1e9)
            while !hasEnded && monotonicNanoseconds() < deadline { usleep(1000) }
            return hasEnded ? bio.status : nil
        }
    }

    func testRejectsEachBadArgumentNamingIt() {
        XCTAssertEqual(rejected("/r 0"), "line 1: delay: requires exactly 3, 6 or 9 arguments: <dev> <offset> <delay ms> [<write dev> <write offset> <write delay ms> [<flush dev> <flush offset> <flush delay ms>]], got 2")
        XCTAssertEqual(rejected("/r 0 1 /w 0"), "line 1: delay: requires exactly 3, 6 or 9 arguments: <dev> <offset> <delay ms> [<write dev> <write offset> <write delay ms> [<flush dev> <flush offset> <flush delay ms>]], got 5")
        XCTAssertEqual(rejected("/r x 1"), "line 1: argument 2 of delay: invalid read device sector 'x'")
        XCTAssertEqual(rejected("/r 0 1.5"), "line 1: argument 3 of delay: invalid read delay '1.5': milliseconds, 0-4294967295")
        XCTAssertEqual(rejected("/r 0 1 /w -3 1"), "line 1: argument 5 of delay: invalid write device sector '-3'")
        XCTAssertEqual(rejected("/r 0 1 /w 0 4294967296"), "line 1: argument 6 of delay: invalid write delay '4294967296': milliseconds, 0-4294967295")
        XCTAssertEqual(rejected("/r 0 1 /w 0 1 /f 0 ms"), "line 1: argument 9 of delay: invalid flush delay 'ms': milliseconds, 0-4294967295")
        XCTAssertTrue(rejected("/r 0 1 /w 200 1").hasPrefix("line 1: argument 4 of delay: device /w is too small"))
        XCTAssertTrue(rejected("/r 0 1 /nowhere 0 1").hasPrefix("line 1: argument 4 of delay: cannot open device /nowhere"))
    }

    func testTableAndStatusLines() throws {
        for table in ["/r 8 100", "/r 8 100 /w 16 0", "/r 8 100 /w 16 0 /f 0 7"] {
            let device = try delay(table)
            XCTAssertEqual(device.live?.lines(.table), ["0 64 delay \(table)"])
            XCTAssertEqual(device.live?.lines(.info), ["0 64 delay 0 0 0"])
        }
    }

    /// A held read has not ended when submit returns, shows in the status, and ends after its
    /// delay with the right data.
    func testReadIsHeldWithoutBlockingTheSubmitter() throws {
        let device = try delay("/r 10 150")
        reads.fill(0x42, at: 12 * 512, count: 512)
        let start = monotonicNanoseconds()
        let read = Pending(.read, sector: 2).start(on: device)
        XCTAssertFalse(read.hasEnded, "the read ended during submit")
        XCTAssertEqual(device.live?.lines(.info), ["0 64 delay 1 0 0"])
        XCTAssertEqual(reads.seen, [], "the read reached the device before its delay")
        XCTAssertEqual(read.wait(), .ok)
        XCTAssertGreaterThanOrEqual(monotonicNanoseconds() - start, 150_000_000, "ended before its delay")
        XCTAssertEqual(read.buffer!.bytes, [UInt8](repeating: 0x42, count: 512))
        XCTAssertEqual(reads.seen, [.init(op: .read, sector: 12, sectors: 1)])
        XCTAssertEqual(device.live?.lines(.info), ["0 64 delay 0 0 0"])
    }

    /// Reads, writes (and discards) and flushes each go to their own device and offset, held
    /// as their class says; a class with delay 0 passes at once.
    func testClassesRouteToTheirDevices() throws {
        let device = try delay("/r 0 0 /w 100 60000 /f 0 0")
        XCTAssertEqual(runBio(.read, on: device, sector: 3, buffer: TestBuffer(sectors: 1)), .ok)
        XCTAssertEqual(runBio(.flush, on: device), .ok)
        XCTAssertEqual(reads.seen, [.init(op: .read, sector: 3, sectors: 1)])
        XCTAssertEqual(flushes.seen, [.init(op: .flush, sector: 0, sectors: 0)])
        let write = Pending(.write, sector: 5, sectors: 2).start(on: device)
        let discard = Pending(.discard, sector: 8, sectors: 4).start(on: device)
        XCTAssertEqual(device.live?.lines(.info), ["0 64 delay 0 2 0"])
        XCTAssertFalse(write.hasEnded || discard.hasEnded)
        XCTAssertEqual(writes.seen, [])
        device.suspend()  // sends the held ones down now
        XCTAssertEqual(write.wait(seconds: 0), .ok)
        XCTAssertEqual(discard.wait(seconds: 0), .ok)
        XCTAssertEqual(writes.seen, [.init(op: .write, sector: 105, sectors: 2), .init(op: .discard, sector: 108, sectors: 4)])
        XCTAssertEqual(writes.bytes(at: 105 * 512, count: 1024), write.buffer!.bytes)
        XCTAssertEqual(runBio(.writeZeroes, on: try delay("/r 0 0"), sectors: 8), .notSupported, "dm-delay takes no write-zeroes")
    }

    func testThreeArgumentsDelayEveryClassOnOneDevice() throws {
        let device = try delay("/r 0 60000")
        let pending = [Pending(.read), Pending(.write), Pending(.flush)].map { $0.start(on: device) }
        XCTAssertEqual(device.live?.lines(.info), ["0 64 delay 1 1 1"])
        device.suspend()
        XCTAssertEqual(pending.map { $0.wait(seconds: 0) }, [.ok, .ok, .ok])
        XCTAssertEqual(reads.seen.map(\.op), [.read, .write, .flush])
    }

    /// Suspend does not wait out the delays: presuspend sends held I/O down. After resume the
    /// target delays again.
    func testSuspendReleasesHeldIOAndResumeDelaysAgain() throws {
        let device = try delay("/r 0 60000")
        let held = (0..<8).map { Pending(.read, sector: UInt64($0)).start(on: device) }
        XCTAssertEqual(device.live?.lines(.info), ["0 64 delay 8 0 0"])
        device.suspend()
        XCTAssertEqual(held.map { $0.wait(seconds: 0) }, Array(repeating: .ok, count: 8))
        XCTAssertEqual(device.live?.lines(.info), ["0 64 delay 0 0 0"])
        try device.resume()
        let again = Pending(.read).start(on: device)
        XCTAssertFalse(again.hasEnded, "not delayed after resume")
        XCTAssertEqual(device.live?.lines(.info), ["0 64 delay 1 0 0"])
        device.suspend()
        XCTAssertEqual(again.wait(seconds: 0), .ok)
    }

    /// Many held I/Os share one timer and all end, each after its own delay.
    func testManyConcurrentIOsAllEnd() throws {
        let device = try delay("/r 0 100 /w 0 50")
        let start = monotonicNanoseconds()
        let held = (0..<16).map { Pending($0 % 2 == 0 ? .read : .write, sector: UInt64($0)).start(on: device) }
        XCTAssertEqual(device.live?.lines(.info), ["0 64 delay 8 8 0"])
        XCTAssertEqual(held.map { $0.wait() }, Array(repeating: .ok, count: 16))
        XCTAssertGreaterThanOrEqual(monotonicNanoseconds() - start, 100_000_000)
        XCTAssertEqual(device.live?.lines(.info), ["0 64 delay 0 0 0"])
        XCTAssertEqual([reads.seen.count, writes.seen.count], [8, 8])
    }
    /// Two delay disks on one daemon's timers: while the first one's due bio is stuck being
    /// submitted, the second's delayed bios still go down and end (on the old design the one
    /// timer thread submitted both, so the second waited for the first's device).
    func testOneDelayDisksStuckSubmissionDoesNotHoldUpAnothers() throws {
        let gate = GateDevice(name: "/gate", sectors: 256)
        let services = TargetServices()
        func table(_ text: String, _ device: BlockDevice) throws -> MappedDevice {
            let mapped = MappedDevice(name: "d")
            mapped.load(try Table(lines: TableLine.parse(text), registry: BuiltinTargets.registry,
                                  resolver: NamedResolver(devices: [device.name: device]), bioSetSize: 8, services: services))
            try mapped.resume()
            return mapped
        }
        let slow = try table("0 64 delay /gate 0 1", gate)
        let other = try table("0 64 delay /r 0 1", reads)
        defer { gate.open() }
        let stuck = Pending(.read).start(on: slow)
        for _ in 0..<20_000 where gate.arrived == 0 { usleep(1000) }
        XCTAssertEqual(gate.arrived, 1, "the slow disk's read reached its device after its delay")
        reads.fill(0x37, at: 5 * 512, count: 512)
        let quick = Pending(.read, sector: 5).start(on: other)
        XCTAssertEqual(quick.wait(), .ok, "the other disk's read ended while the first one's was stuck")
        XCTAssertEqual(quick.buffer?.bytes.first, 0x37)
        XCTAssertFalse(stuck.hasEnded)
        gate.open()
        XCTAssertEqual(stuck.wait(), .ok)
    }
}
