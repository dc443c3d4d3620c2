import UDMCore
import UDMTargets
import UDMTestSupport
import XCTest

/// The data of a PREFLUSH write starts only after every flush clone has ended (dm issues the
/// payload of a flush bio once the empty flush has completed). Each test puts a `delay` disk
/// that holds flushes (and nothing else) under the disk that receives the PREFLUSH, so a
/// pipeline that sends the data right behind the flush lets it reach the lowest device first.
final class PreflushOrderTests: XCTestCase {
    /// A disk named `name` over `table`'s devices, live.
    private func disk(_ name: String, _ text: String, _ devices: [String: BlockDevice],
                      services: TargetServices = TargetServices()) throws -> MappedDevice {
        let table = try Table(lines: TableLine.parse(text), registry: BuiltinTargets.registry,
                              resolver: NamedResolver(devices: devices), bioSetSize: 16, services: services)
        let device = MappedDevice(name: name)
        device.load(table)
        try device.resume()
        return device
    }

    /// A delay disk over `lowest` that holds flushes 50 ms and passes reads and writes at once.
    private func lateFlushes(over lowest: MemoryDevice) throws -> MappedDevice {
        let n = lowest.name
        return try disk("late", "0 \(lowest.sectors) delay \(n) 0 0 \(n) 0 0 \(n) 0 50", [n: lowest])
    }

    private func ops(_ seen: [MemoryDevice.Seen]) -> [String] {
        seen.map { "\($0.op) \($0.sector)+\($0.sectors)" }
    }

    func testStackedPreflushWriteReachesTheLowestDeviceAfterItsFlush() throws {
        let lowest = MemoryDevice(name: "/low", sectors: 256)
        let top = try disk("top", "0 256 linear mid 0", ["mid": try lateFlushes(over: lowest)])
        lowest.clearLog()
        let data = TestBuffer(sectors: 8, seed: 7)
        XCTAssertEqual(runBio(.write, on: top, sector: 16, buffer: data, flags: [.preflush, .fua]), .ok)
        XCTAssertEqual(ops(lowest.seen), ["flush 0+0", "write 16+8"])
        XCTAssertTrue(lowest.bytes(at: 16 << 9, count: 8 << 9) == data.bytes, "the data did not land")
    }

    func testAFailedPreflushFailsTheWriteWithoutWritingItsData() throws {
        let lowest = MemoryDevice(name: "/low", sectors: 256)
        lowest.fail(0...0)  // the flush (sector 0, no data); the write goes to sector 16
        let top = try disk("top", "0 256 linear mid 0", ["mid": try lateFlushes(over: lowest)])
        XCTAssertEqual(runBio(.write, on: top, sector: 16, buffer: TestBuffer(sectors: 8, seed: 7), flags: [.preflush]), .ioError)
        XCTAssertFalse(lowest.seen.contains { $0.op == .write && $0.sector == 16 }, "the data was written after a failed flush")
        XCTAssertTrue(lowest.bytes(at: 16 << 9, count: 8 << 9).allSatisfy { $0 == 0 }, "the data reached the device")
        // A plain write still works: only the flush fails.
        XCTAssertEqual(runBio(.write, on: top, sector: 16, buffer: TestBuffer(sectors: 8, seed: 7)), .ok)
    }

    /// A persistent snapshot whose COW is a stacked disk: the metadata commit (PREFLUSH + FUA)
    /// must reach the COW's lowest device after the flush, and the flush after the copied chunk,
    /// so the record never becomes durable before the data it points at.
    func testSnapshotCommitIsWrittenAfterTheFlushThatCoversItsData() throws {
        let origin = MemoryDevice(name: "/origin", sectors: 256)
        origin.fill(0xA5, at: 0, count: 256 << 9)
        let cowLowest = MemoryDevice(name: "/cow", sectors: 256)
        let cow = try disk("cow", "0 256 linear late 0", ["late": try lateFlushes(over: cowLowest)])
        let services = TargetServices()
        let snapshot = try disk("snap", "0 256 snapshot /origin cow P 8", ["/origin": origin, "cow": cow], services: services)
        cowLowest.clearLog()

        XCTAssertEqual(runBio(.write, on: snapshot, sector: 0, buffer: TestBuffer(sectors: 1, seed: 3)), .ok)
        let seen = ops(cowLowest.seen)
        // COW chunk 2 (sectors 16..23) gets the copy, area 0 (chunk 1, sectors 8..15) the record.
        let copy = try XCTUnwrap(seen.firstIndex(of: "write 16+8"), "\(seen)")
        let flush = try XCTUnwrap(seen.firstIndex(of: "flush 0+0"), "\(seen)")
        let record = try XCTUnwrap(seen.firstIndex(of: "write 8+8"), "\(seen)")
        XCTAssertLessThan(copy, flush, "\(seen)")
        XCTAssertLessThan(flush, record, "the metadata commit passed its preflush: \(seen)")
        // The record on the lowest device names origin chunk 0 → COW chunk 2.
        XCTAssertEqual(cowLowest.bytes(at: 8 << 9, count: 16), [0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0])
    }
}
