import Foundation
import UDMCore
import UDMTestSupport
import XCTest

/// The plug: adjacent pieces of a split bio reach a device that takes runs as one run; the
/// bioset starts plugged bios before it waits, so a thread never waits for clones it holds.
final class PlugTests: XCTestCase {
    private let mebibyte = 1 << 20

    func testOneMebibyteOverTwoStripesArrivesAsOneRunPerStripe() throws {
        let a = MemoryDevice(name: "/a", sectors: 4096, maxRunBytes: mebibyte)
        let b = MemoryDevice(name: "/b", sectors: 4096, maxRunBytes: mebibyte)
        let device = try makeDevice("0 8192 striped 2 128 /a 0 /b 0", devices: ["/a": a, "/b": b], bioSetSize: 256)
        let data = buffer(sectors: 2048)
        defer { data.deallocate() }
        for chunk in 0..<16 { (data + chunk << 16).initializeMemory(as: UInt8.self, repeating: UInt8(chunk + 1), count: 1 << 16) }
        XCTAssertEqual(BioWaiter().run(Bio(op: .write, sector: 2048, sectors: 2048, buffer: data), on: device), .ok)
        XCTAssertEqual(a.runs, [.init(op: .write, sector: 1024, sectors: 1024)])
        XCTAssertEqual(b.runs, [.init(op: .write, sector: 1024, sectors: 1024)])
        XCTAssertEqual(a.seen.count, 8)
        // Chunk k of the bio went to stripe k % 2, at its k / 2-th chunk there.
        XCTAssertEqual((0..<8).map { a.byte(at: (1024 + $0 * 128) * 512) }, [1, 3, 5, 7, 9, 11, 13, 15])
        XCTAssertEqual((0..<8).map { b.byte(at: (1024 + $0 * 128 + 127) * 512 + 511) }, [2, 4, 6, 8, 10, 12, 14, 16])

        let back = buffer(sectors: 2048)
        defer { back.deallocate() }
        XCTAssertEqual(BioWaiter().run(Bio(op: .read, sector: 2048, sectors: 2048, buffer: back), on: device), .ok)
        XCTAssertEqual(memcmp(data, back, 2048 * 512), 0)
        XCTAssertEqual(a.runs.last, .init(op: .read, sector: 1024, sectors: 1024))
    }

    func testPiecesThatAreNotAdjacentStaySeparateRuns() throws {
        let a = MemoryDevice(name: "/a", sectors: 1000, maxRunBytes: mebibyte)
        let device = try makeDevice("0 8 linear /a 100\n8 8 linear /a 0\n16 8 linear /a 8", devices: ["/a": a], bioSetSize: 64)
        let data = buffer(sectors: 24)
        defer { data.deallocate() }
        XCTAssertEqual(BioWaiter().run(Bio(op: .write, sector: 0, sectors: 24, buffer: data), on: device), .ok)
        XCTAssertEqual(a.runs, [.init(op: .write, sector: 100, sectors: 8), .init(op: .write, sector: 0, sectors: 16)])
    }

    /// A pool of 8 hands out 2 clones per pass; a 16-piece bio empties it with pieces still
    /// plugged. Unplugging before the wait lets them finish; waiting with them held (the naive
    /// policy) waits forever, and the watchdog shows it.
    func testBiosetUnplugsBeforeItWaits() throws {
        XCTAssertEqual(try sixteenPieceWrite(policy: .noWaitThenMutex), true)
    }

    func testWatchdogCatchesAWaitWithBiosOnThePlug() throws {
        XCTAssertEqual(try sixteenPieceWrite(policy: .naive), false)
    }

    /// Whether a 16-piece write over a pool of 8 completes within 3 s.
    private func sixteenPieceWrite(policy: BioSet.ManyPolicy) throws -> Bool {
        let a = MemoryDevice(name: "/a", sectors: 4096, maxRunBytes: mebibyte)
        let b = MemoryDevice(name: "/b", sectors: 4096, maxRunBytes: mebibyte)
        let device = try makeDevice("0 8192 striped 2 8 /a 0 /b 0", devices: ["/a": a, "/b": b],
                                    bioSetSize: 8, policy: policy)
        let done = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            // Left blocked (and `data` with it) if the write never completes.
            let data = buffer(sectors: 128, value: 0x5A)
            if BioWaiter().run(Bio(op: .write, sector: 0, sectors: 128, buffer: data), on: device) == .ok {
                data.deallocate()
                done.signal()
            }
        }
        guard done.wait(timeout: .now() + 3) == .success else { return false }
        XCTAssertEqual(a.seen.count + b.seen.count, 16)
        XCTAssertLessThan(a.runs.count, 8)
        XCTAssertEqual(a.byte(at: 63 * 512), 0x5A)
        XCTAssertEqual(b.byte(at: 63 * 512), 0x5A)
        return true
    }
}
