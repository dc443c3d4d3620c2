import Synchronization
import UDMCore
import UDMTargets
import UDMTestSupport
import XCTest


final class DepthFirstTests: XCTestCase {
    /// top: striped over two recorded lower disks, each a linear disk over a recorded image.
    /// A write crossing chunk boundaries must be handled one piece at a time, each piece all
    /// the way down before the remainder is split further (dm since 4.16).
    func testSplitRemainderRunsAfterEverythingTheFirstPieceProduced() throws {
        let log = EventLog()
        let images = (0..<2).map { MemoryDevice(name: "img\($0)", sectors: 1000) }
        var lowers: [String: BlockDevice] = [:]
        for index in 0..<2 {
            let lower = MappedDevice(name: "lower\(index)")
            lower.load(try Table(lines: TableLine.parse("0 500 linear img 100"), registry: BuiltinTargets.registry,
                                 resolver: NamedResolver(devices: ["img": RecordingDevice(name: "img\(index)", inner: images[index], log: log)]),
                                 bioSetSize: 1))
            try lower.resume()
            lowers["lower\(index)"] = RecordingDevice(name: "lower\(index)", inner: lower, log: log)
        }
        let top = MappedDevice(name: "top")
        top.load(try Table(lines: TableLine.parse("0 64 striped 2 8 lower0 0 lower1 0"), registry: BuiltinTargets.registry,
                           resolver: NamedResolver(devices: lowers), bioSetSize: 1))
        try top.resume()
        let data = buffer(sectors: 20)
        defer { data.deallocate() }
        XCTAssertEqual(BioWaiter().run(Bio(op: .write, sector: 4, sectors: 20, buffer: data), on: top), .ok)
        XCTAssertEqual(log.all, [
            "lower0 4+4", "img0 104+4",
            "lower1 0+8", "img1 100+8",
            "lower0 8+8", "img0 108+8",
        ])
    }
}
