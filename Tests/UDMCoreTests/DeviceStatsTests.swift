import Glibc
import Synchronization
import UDMCore
import UDMTargets
import UDMTestSupport
import XCTest

final class DeviceStatsTests: XCTestCase {
    /// Holds every bio until `release`, so a test can see I/O in flight.
    final class HoldingDevice: BlockDevice, @unchecked Sendable {
        let name = "/hold"
        let sectors: UInt64 = 1000
        var discardZeroes: Bool { false }
        private let held = Mutex<[Bio]>([])

        func submitBio(_ bio: Bio) { held.withLock { $0.append(bio) } }
        var count: Int { held.withLock { $0.count } }

        func release() {
            for bio in held.withLock({ bios in defer { bios.removeAll() }; return bios }) { bio.end(.ok) }
        }
    }

    /// A bio that ends on another thread's say-so.
    final class Waiter: BioCompletion, @unchecked Sendable {
        let ended = Atomic<Bool>(false)
        func bioCompleted(_ bio: Bio) { ended.store(true, ordering: .sequentiallyConsistent) }
    }

    func testCountsExactlyTheIOsMadeByGroup() throws {
        let a = MemoryDevice(name: "/a", sectors: 4096)
        let device = try makeDevice("0 4096 linear /a 0", devices: ["/a": a])
        let data = buffer(sectors: 64)
        defer { data.deallocate() }
        let waiter = BioWaiter()
        for i in 0..<10 { waiter.run(Bio(op: .write, sector: UInt64(i) * 8, sectors: 8, buffer: data), on: device) }
        for _ in 0..<3 { waiter.run(Bio(op: .read, sector: 100, sectors: 64, buffer: data), on: device) }
        waiter.run(Bio(op: .writeZeroes, sector: 0, sectors: 16), on: device)
        waiter.run(Bio(op: .discard, sector: 0, sectors: 32), on: device)
        waiter.run(Bio(op: .flush), on: device)
        waiter.run(Bio(op: .write, sector: 0, sectors: 1, buffer: data, flags: [.preflush, .fua]), on: device)
        let stats = device.statistics()
        XCTAssertEqual(stats[.write].ios, 12, "10 writes, one write-zeroes, one PREFLUSH write")
        XCTAssertEqual(stats[.write].sectors, 10 * 8 + 16 + 1)
        XCTAssertEqual(stats[.read].ios, 3)
        XCTAssertEqual(stats[.read].sectors, 3 * 64)
        XCTAssertEqual(stats[.discard].ios, 1)
        XCTAssertEqual(stats[.discard].sectors, 32)
        XCTAssertEqual(stats[.flush].ios, 1)
        XCTAssertEqual(stats[.flush].sectors, 0)
        for group in DeviceStats.Group.allCases {
            XCTAssertEqual(stats[group].histogram.reduce(0, +), stats[group].ios, "\(group): histogram total")
            XCTAssertEqual(stats[group].merges, 0, "\(group): nothing was split")
        }
        XCTAssertEqual(stats.inFlight, 0)
    }

    /// An original cut into several pieces (target boundaries, chunk boundaries) counts once as
    /// a merge; one that fits a target does not. Failed I/O counts too.
    func testSplitsCountAsMergesAndErrorsAreCounted() throws {
        let a = MemoryDevice(name: "/a", sectors: 4096)
        let device = try makeDevice("0 100 linear /a 0\n100 100 error\n200 64 striped 2 8 /a 1000 /a 2000",
                                    devices: ["/a": a])
        let data = buffer(sectors: 64)
        defer { data.deallocate() }
        let waiter = BioWaiter()
        XCTAssertEqual(waiter.run(Bio(op: .read, sector: 0, sectors: 50, buffer: data), on: device), .ok)
        XCTAssertEqual(waiter.run(Bio(op: .read, sector: 90, sectors: 20, buffer: data), on: device), .ioError)
        XCTAssertEqual(waiter.run(Bio(op: .write, sector: 200, sectors: 32, buffer: data), on: device), .ok)
        let stats = device.statistics()
        XCTAssertEqual(stats[.read].ios, 2)
        XCTAssertEqual(stats[.read].merges, 1)
        XCTAssertEqual(stats[.read].sectors, 70)
        XCTAssertEqual(stats[.write].ios, 1)
        XCTAssertEqual(stats[.write].merges, 1, "4 chunks, one original")
    }

    /// In flight while held below; its latency lands in a bucket at least as high as the time
    /// it was held; taking the statistics starts them again, keeping what came after.
    func testInFlightLatencyAndTake() throws {
        let holder = HoldingDevice()
        let table = try Table(lines: TableLine.parse("0 1000 linear /hold 0"), registry: BuiltinTargets.registry,
                              resolver: NamedResolver(devices: ["/hold": holder]), bioSetSize: 4)
        let device = MappedDevice(name: "held")
        device.load(table)
        try device.resume()
        let data = buffer(sectors: 8)
        defer { data.deallocate() }
        let waiter = Waiter()
        let bio = Bio(op: .read, sector: 0, sectors: 8, buffer: data)
        bio.completion = waiter
        bio.submit(to: device)
        XCTAssertEqual(holder.count, 1)
        XCTAssertEqual(device.statistics().inFlight, 1)
        XCTAssertEqual(device.statistics()[.read].ios, 0, "counted before it completed")
        usleep(20_000)
        holder.release()
        XCTAssertTrue(waiter.ended.load(ordering: .sequentiallyConsistent))
        let stats = device.statistics()
        XCTAssertEqual(stats.inFlight, 0)
        XCTAssertEqual(stats[.read].ios, 1)
        XCTAssertGreaterThanOrEqual(stats[.read].nanoseconds, 20_000_000)
        // 20 ms = 20000 µs: bucket 14 holds [16384, 32768) µs.
        let bucket = try XCTUnwrap(stats[.read].histogram.firstIndex { $0 > 0 })
        XCTAssertGreaterThanOrEqual(bucket, 14)

        let taken = device.takeStatistics()
        XCTAssertEqual(taken[.read].ios, 1)
        XCTAssertEqual(device.statistics()[.read], DeviceStats.Counts())
        let again = Bio(op: .read, sector: 0, sectors: 8, buffer: data)
        again.completion = waiter
        again.submit(to: device)
        holder.release()
        XCTAssertEqual(device.statistics()[.read].ios, 1)
    }
}

