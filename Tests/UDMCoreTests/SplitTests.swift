import UDMCore
import UDMTargets
import UDMTestSupport
import XCTest

final class SplitTests: XCTestCase {
    func testBioCrossingThreeTargetsBecomesThreeClonesAtTheRightOffsets() throws {
        let a = MemoryDevice(name: "/a", sectors: 1000)
        let b = MemoryDevice(name: "/b", sectors: 1000)
        let device = try makeDevice("0 100 linear /a 500\n100 10 linear /b 0\n110 100 linear /a 7",
                                    devices: ["/a": a, "/b": b])
        let data = buffer(sectors: 30, value: 0xAB)
        defer { data.deallocate() }
        let bio = Bio(op: .write, sector: 95, sectors: 30, buffer: data)
        XCTAssertEqual(BioWaiter().run(bio, on: device), .ok)
        XCTAssertEqual(a.seen, [.init(op: .write, sector: 595, sectors: 5), .init(op: .write, sector: 7, sectors: 15)])
        XCTAssertEqual(b.seen, [.init(op: .write, sector: 0, sectors: 10)])
        XCTAssertEqual(a.byte(at: 595 * 512), 0xAB)
        XCTAssertEqual(a.byte(at: 594 * 512 + 511), 0)
        XCTAssertEqual(a.byte(at: 22 * 512 - 1), 0xAB)
        XCTAssertEqual(a.byte(at: 22 * 512), 0)
    }

    func testReadReturnsEachPieceFromItsDevice() throws {
        let a = MemoryDevice(name: "/a", sectors: 100)
        let b = MemoryDevice(name: "/b", sectors: 100)
        a.fill(1, at: 0, count: 100 * 512)
        b.fill(2, at: 0, count: 100 * 512)
        let device = try makeDevice("0 4 linear /a 0\n4 4 zero\n8 4 linear /b 0", devices: ["/a": a, "/b": b])
        let data = buffer(sectors: 12, value: 0xFF)
        defer { data.deallocate() }
        XCTAssertEqual(BioWaiter().run(Bio(op: .read, sector: 0, sectors: 12, buffer: data), on: device), .ok)
        XCTAssertEqual([0, 4 * 512, 8 * 512, 12 * 512 - 1].map { data.load(fromByteOffset: $0, as: UInt8.self) }, [1, 0, 2, 2])
    }

    func testOriginalCompletesOnceAfterAllClonesWithTheFirstError() throws {
        let a = MemoryDevice(name: "/a", sectors: 100)
        a.fail(20...20, with: .noSpace)
        a.fail(40...40, with: .ioError)
        let device = try makeDevice("0 10 linear /a 0\n10 10 linear /a 10\n20 10 linear /a 20\n30 20 linear /a 30",
                                    devices: ["/a": a])
        let counter = CompletionCounter()
        let data = buffer(sectors: 50)
        defer { data.deallocate() }
        let bio = Bio(op: .write, sector: 0, sectors: 50, buffer: data)
        bio.completion = counter
        bio.submit(to: device)
        XCTAssertEqual(counter.count, 1)
        XCTAssertEqual(bio.status, .noSpace)
        XCTAssertEqual(a.seen.count, 4)
    }

    func testErrorTargetFailsOnlyItsRange() throws {
        let a = MemoryDevice(name: "/a", sectors: 100)
        let device = try makeDevice("0 10 linear /a 0\n10 10 error\n20 10 linear /a 20", devices: ["/a": a])
        let data = buffer(sectors: 10)
        defer { data.deallocate() }
        let waiter = BioWaiter()
        XCTAssertEqual(waiter.run(Bio(op: .read, sector: 0, sectors: 10, buffer: data), on: device), .ok)
        XCTAssertEqual(waiter.run(Bio(op: .read, sector: 5, sectors: 10, buffer: data), on: device), .ioError)
        XCTAssertEqual(waiter.run(Bio(op: .read, sector: 20, sectors: 10, buffer: data), on: device), .ok)
    }

    func testFlushReachesEveryTargetOnce() throws {
        let a = MemoryDevice(name: "/a", sectors: 100)
        let b = MemoryDevice(name: "/b", sectors: 100)
        let device = try makeDevice("0 10 linear /a 0\n10 10 linear /b 0\n20 10 linear /a 50", devices: ["/a": a, "/b": b])
        XCTAssertEqual(BioWaiter().run(Bio(op: .flush), on: device), .ok)
        XCTAssertEqual(a.seen.map(\.op), [.flush, .flush])
        XCTAssertEqual(b.seen.map(\.op), [.flush])
    }

    func testDiscardIsSplitAtTargetsOnly() throws {
        let a = MemoryDevice(name: "/a", sectors: 1000)
        a.fill(9, at: 0, count: 1000 * 512)
        let device = try makeDevice("0 100 linear /a 100\n100 100 linear /a 500", devices: ["/a": a])
        XCTAssertEqual(BioWaiter().run(Bio(op: .discard, sector: 50, sectors: 100), on: device), .ok)
        XCTAssertEqual(a.seen, [.init(op: .discard, sector: 150, sectors: 50), .init(op: .discard, sector: 500, sectors: 50)])
        XCTAssertEqual(a.byte(at: 150 * 512), 0)
        XCTAssertEqual(a.byte(at: 149 * 512), 9)
    }

    func testIOPastTheEndFails() throws {
        let device = try makeDevice("0 10 zero", devices: [:])
        let data = buffer(sectors: 4)
        defer { data.deallocate() }
        XCTAssertEqual(BioWaiter().run(Bio(op: .read, sector: 8, sectors: 4, buffer: data), on: device), .ioError)
    }

    func testStackedDevicesComposeOffsets() throws {
        let a = MemoryDevice(name: "/a", sectors: 1000)
        let lower = try makeDevice("0 500 linear /a 100", devices: ["/a": a])
        let upper = MappedDevice(name: "upper")
        let table = try Table(lines: TableLine.parse("0 100 linear lower 30"), registry: BuiltinTargets.registry,
                              resolver: StackResolver(lower: lower), bioSetSize: 1)
        upper.load(table)
        try upper.resume()
        let data = buffer(sectors: 10, value: 7)
        defer { data.deallocate() }
        XCTAssertEqual(BioWaiter().run(Bio(op: .write, sector: 5, sectors: 10, buffer: data), on: upper), .ok)
        XCTAssertEqual(a.seen, [.init(op: .write, sector: 135, sectors: 10)])
    }

    func testSuspendHoldsIOUntilResume() throws {
        let a = MemoryDevice(name: "/a", sectors: 100)
        let device = try makeDevice("0 100 linear /a 0", devices: ["/a": a])
        device.suspend()
        let counter = CompletionCounter()
        let data = buffer(sectors: 1, value: 3)
        defer { data.deallocate() }
        let bio = Bio(op: .write, sector: 1, sectors: 1, buffer: data)
        bio.completion = counter
        bio.submit(to: device)
        XCTAssertEqual(counter.count, 0)
        XCTAssertTrue(a.seen.isEmpty)
        try device.resume()
        XCTAssertEqual(counter.count, 1)
        XCTAssertEqual(a.byte(at: 512), 3)
    }

    func testResumeSwapsInTheLoadedTable() throws {
        let a = MemoryDevice(name: "/a", sectors: 100)
        let b = MemoryDevice(name: "/b", sectors: 100)
        let devices = ["/a": a, "/b": b]
        let device = try makeDevice("0 100 linear /a 0", devices: devices)
        device.load(try Table(lines: TableLine.parse("0 50 linear /b 0"), registry: BuiltinTargets.registry,
                              resolver: NamedResolver(devices: devices), bioSetSize: 1))
        XCTAssertEqual(device.sectors, 100)
        device.suspend()
        try device.resume()
        XCTAssertEqual(device.sectors, 50)
        XCTAssertEqual(BioWaiter().run(Bio(op: .flush), on: device), .ok)
        XCTAssertEqual(b.seen.map(\.op), [.flush])
        XCTAssertTrue(a.seen.isEmpty)
    }
}

/// Counts completions of an original bio.
final class CompletionCounter: BioCompletion, @unchecked Sendable {
    var count = 0
    func bioCompleted(_ bio: Bio) { count += 1 }
}

/// Resolves one name to a lower mapped device.
struct StackResolver: DeviceResolver {
    let lower: MappedDevice
    func open(_ name: String) throws -> BlockDevice { lower }
}

/// A linear-like target over one device that cuts I/O every `chunk` sectors of its own range.
final class ChunkedTarget: Target {
    static let name = "chunked"
    static let version = (0, 0, 1)
    let device: BlockDevice
    let chunk: UInt64

    init(arguments: [String], context: TargetContext) throws {
        chunk = try parseSectors(arguments[1], argument: 2, what: "chunk")
        device = try context.openDevice(arguments[0], argument: 1, sectors: context.end)
    }

    var maxIOLength: UInt64 { chunk }
    func map(_ bio: Bio) -> MapResult { .remapped(to: device) }
    func status(_ kind: StatusKind) -> String { "" }
}

final class MaxIOLengthTests: XCTestCase {
    func testReadsAndWritesAreCutAtTheTargetsBoundariesCountedFromItsBegin() throws {
        let a = MemoryDevice(name: "/a", sectors: 1000)
        let registry = TargetRegistry([ChunkedTarget.self, ZeroTarget.self])
        let table = try Table(lines: TableLine.parse("0 3 zero\n3 100 chunked /a 8"), registry: registry,
                              resolver: NamedResolver(devices: ["/a": a]), bioSetSize: 2)
        let device = MappedDevice(name: "chunked")
        device.load(table)
        try device.resume()
        let data = buffer(sectors: 20)
        defer { data.deallocate() }
        XCTAssertEqual(BioWaiter().run(Bio(op: .write, sector: 5, sectors: 20, buffer: data), on: device), .ok)
        // Target-relative 2..22 cut at 8 and 16: device sectors 5..10, 11..18, 19..24.
        XCTAssertEqual(a.seen, [.init(op: .write, sector: 5, sectors: 6), .init(op: .write, sector: 11, sectors: 8),
                                .init(op: .write, sector: 19, sectors: 6)])
        a.clearLog()
        XCTAssertEqual(BioWaiter().run(Bio(op: .discard, sector: 5, sectors: 20), on: device), .ok)
        XCTAssertEqual(a.seen, [.init(op: .discard, sector: 5, sectors: 20)], "discards are not cut at maxIOLength")
    }
}
