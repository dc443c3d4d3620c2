import Foundation
import UDMCore
import UDMTargets
import UDMTestSupport
import XCTest

/// `whenMerged`: the event the registry finishes a merge on, instead of polling the status.
final class SnapshotMergeCompletionTests: XCTestCase {
    let real = MemoryDevice(name: "real", sectors: 1024, recording: false)
    let cow = MemoryDevice(name: "cow", sectors: 2048, recording: false)
    let services = TargetServices()

    private final class Calls: @unchecked Sendable {
        private let lock = NSLock()
        private var count = 0
        let first = DispatchSemaphore(value: 0)
        func record() {
            lock.withLock { count += 1 }
            first.signal()
        }
        var total: Int { lock.withLock { count } }
    }

    private func device(_ text: String) throws -> MappedDevice {
        let device = MappedDevice(name: "d")
        device.load(try Table(lines: TableLine.parse(text), registry: BuiltinTargets.registry,
                              resolver: NamedResolver(devices: ["real": real, "cow": cow]), bioSetSize: 4, services: services))
        try device.resume()
        return device
    }

    private func write(_ device: BlockDevice, sector: UInt64, sectors: UInt64, value: UInt8) -> BioStatus {
        let data = UnsafeMutableRawPointer.allocate(byteCount: Int(sectors) << 9, alignment: 4096)
        defer { data.deallocate() }
        data.initializeMemory(as: UInt8.self, repeating: value, count: Int(sectors) << 9)
        return BioWaiter().run(Bio(op: .write, sector: sector, sectors: sectors, buffer: data), on: device)
    }

    func testRunsOnceWhenEveryExceptionIsMerged() throws {
        real.fill(1, at: 0, count: 1024 * 512)
        let origin = try device("0 1024 snapshot-origin real")
        var snapshot: MappedDevice? = try device("0 1024 snapshot real cow P 8")
        XCTAssertEqual(write(origin, sector: 0, sectors: 256, value: 2), .ok)
        XCTAssertEqual(write(snapshot!, sector: 500, sectors: 8, value: 3), .ok)
        snapshot = nil
        origin.suspend()
        let merge = try device("0 1024 snapshot-merge real cow P 8")
        let target = try XCTUnwrap(merge.live?.entries.first?.target as? SnapshotMergeTarget)
        let calls = Calls()
        target.whenMerged { calls.record() }
        XCTAssertEqual(calls.first.wait(timeout: .now() + 30), .success, "whenMerged never ran")
        XCTAssertEqual(merge.live?.lines(.info), ["0 1024 snapshot-merge 16/2048 16"], "it ran before every exception was merged")
        XCTAssertEqual([0, 255, 256, 500, 507].map { real.byte(at: $0 * 512) }, [1, 1, 1, 3, 3])
        merge.suspend()
        try merge.resume()
        XCTAssertEqual(calls.total, 1, "whenMerged ran more than once")
    }

    func testRunsAtOnceWhenNothingIsLeftToMerge() throws {
        let origin = try device("0 1024 snapshot-origin real")
        // A snapshot that is gone at once: its COW holds a header and no exception.
        _ = try device("0 1024 snapshot real cow P 8")
        origin.suspend()
        let merge = try device("0 1024 snapshot-merge real cow P 8")
        let target = try XCTUnwrap(merge.live?.entries.first?.target as? SnapshotMergeTarget)
        let calls = Calls()
        target.whenMerged { calls.record() }
        XCTAssertEqual(calls.total, 1, "an empty merge did not report itself done at once")
    }
}
