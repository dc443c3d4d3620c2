import UDMCore
import UDMTargets
import UDMTestSupport
import XCTest

final class StripedTargetTests: XCTestCase {
    let images = (0..<4).map { MemoryDevice(name: "/s\($0)", sectors: 4096) }
    var devices: [String: MemoryDevice] { Dictionary(uniqueKeysWithValues: images.map { ($0.name, $0) }) }

    private func striped(_ text: String, bioSetSize: Int = 1) throws -> MappedDevice {
        let device = MappedDevice(name: "striped")
        device.load(try Table(lines: TableLine.parse(text), registry: BuiltinTargets.registry,
                              resolver: NamedResolver(devices: devices), bioSetSize: bioSetSize))
        try device.resume()
        return device
    }

    private func rejection(_ text: String) -> String {
        do {
            _ = try striped(text)
            return "accepted"
        } catch {
            return "\(error)"
        }
    }

    func testRejectsEachBadArgumentTheWayDmDoes() {
        XCTAssertEqual(rejection("0 64 striped 0 8"), "line 1: argument 1 of striped: invalid stripe count '0'")
        XCTAssertEqual(rejection("0 64 striped 2 0 /s0 0 /s1 0"), "line 1: argument 2 of striped: invalid chunk size '0'")
        XCTAssertEqual(rejection("0 64 striped 2 8 /s0 0"), "line 1: striped: 2 stripes need 6 arguments, got 4")
        XCTAssertEqual(rejection("0 30 striped 8888888888888888880 3"), "line 1: striped: 8888888888888888880 stripes need more than 9223372036854775807 arguments, got 2")
        XCTAssertEqual(rejection("0 30 striped 4611686018427387902 3"), "line 1: striped: 4611686018427387902 stripes need 9223372036854775806 arguments, got 2")
        XCTAssertEqual(rejection("0 63 striped 2 8 /s0 0 /s1 0"), "line 1: striped: target length 63 is not divisible by the number of stripes 2")
        XCTAssertEqual(rejection("0 36 striped 2 8 /s0 0 /s1 0"), "line 1: striped: target length per stripe 18 is not divisible by the chunk size 8")
        XCTAssertEqual(rejection("0 64 striped 2 8 /s0 x /s1 0"), "line 1: argument 4 of striped: invalid stripe 0 offset 'x'")
        XCTAssertTrue(rejection("0 64 striped 2 8 /s0 0 /s1 4090").hasPrefix("line 1: argument 5 of striped: device /s1 is too small"))
        XCTAssertEqual(rejection("0 10 striped"), "line 1: striped: not enough arguments: expected <#stripes> <chunk size> [<dev> <offset>]+")
    }

    func testTableAndStatusLines() throws {
        let device = try striped("0 96 striped 3 16 /s0 5 /s1 6 /s2 7")
        XCTAssertEqual(device.live?.lines(.table), ["0 96 striped 3 16 /s0 5 /s1 6 /s2 7"])
        XCTAssertEqual(device.live?.lines(.info), ["0 96 striped 3 /s0 /s1 /s2 1 AAA"])
    }

    func testWritesLandWhereTheMappingSays() throws {
        let device = try striped("0 96 striped 3 16 /s0 5 /s1 6 /s2 7")
        let data = UnsafeMutableRawPointer.allocate(byteCount: 96 * 512, alignment: 4096)
        defer { data.deallocate() }
        for sector in 0..<96 { (data + sector * 512).initializeMemory(as: UInt8.self, repeating: UInt8(sector + 1), count: 512) }
        XCTAssertEqual(BioWaiter().run(Bio(op: .write, sector: 0, sectors: 96, buffer: data), on: device), .ok)
        for sector in 0..<96 {
            let chunk = sector / 16
            let stripe = chunk % 3
            let onStripe = (chunk / 3) * 16 + sector % 16
            XCTAssertEqual(images[stripe].byte(at: (5 + stripe + onStripe) * 512), UInt8(sector + 1), "sector \(sector)")
        }
    }

    func testNonPowerOfTwoChunk() throws {
        let device = try striped("0 60 striped 2 10 /s0 0 /s1 0")
        let data = UnsafeMutableRawPointer.allocate(byteCount: 512, alignment: 4096)
        defer { data.deallocate() }
        data.initializeMemory(as: UInt8.self, repeating: 9, count: 512)
        XCTAssertEqual(BioWaiter().run(Bio(op: .write, sector: 35, sectors: 1, buffer: data), on: device), .ok)
        // chunk 3 (sectors 30..39) is stripe 1's second chunk: sector 10 + 5.
        XCTAssertEqual(images[1].seen, [.init(op: .write, sector: 15, sectors: 1)])
    }

    func testFlushGoesToEveryStripe() throws {
        let device = try striped("0 64 striped 4 8 /s0 0 /s1 0 /s2 0 /s3 0")
        XCTAssertEqual(device.live?.bioSet.capacity, 4, "the pool holds at least one full set of duplicates")
        XCTAssertEqual(BioWaiter().run(Bio(op: .flush), on: device), .ok)
        XCTAssertEqual(images.map { $0.seen.map(\.op) }, Array(repeating: [.flush], count: 4))
    }

    func testDiscardCoversExactlyEachStripesShare() throws {
        let device = try striped("0 128 striped 4 8 /s0 100 /s1 200 /s2 300 /s3 400")
        // Sectors 5..69: chunks 0 (5..7), 1..7 whole, 8 (64..69).
        XCTAssertEqual(BioWaiter().run(Bio(op: .discard, sector: 5, sectors: 65), on: device), .ok)
        XCTAssertEqual(images[0].seen, [.init(op: .discard, sector: 105, sectors: 17)], "3 of chunk 0, chunk 4, 6 of chunk 8")
        XCTAssertEqual(images[1].seen, [.init(op: .discard, sector: 200, sectors: 16)])
        XCTAssertEqual(images[2].seen, [.init(op: .discard, sector: 300, sectors: 16)])
        XCTAssertEqual(images[3].seen, [.init(op: .discard, sector: 400, sectors: 16)])
    }

    func testSmallDiscardSkipsStripesItDoesNotTouch() throws {
        let device = try striped("0 128 striped 4 8 /s0 0 /s1 0 /s2 0 /s3 0")
        XCTAssertEqual(BioWaiter().run(Bio(op: .writeZeroes, sector: 10, sectors: 4), on: device), .ok)
        XCTAssertEqual(images[1].seen, [.init(op: .writeZeroes, sector: 2, sectors: 4)])
        XCTAssertTrue(images[0].seen.isEmpty && images[2].seen.isEmpty && images[3].seen.isEmpty)
    }

    func testStripeWithAnErrorShowsDegraded() throws {
        images[2].fail(0...10)
        let device = try striped("0 64 striped 4 8 /s0 0 /s1 0 /s2 0 /s3 0")
        let data = UnsafeMutableRawPointer.allocate(byteCount: 64 * 512, alignment: 4096)
        defer { data.deallocate() }
        XCTAssertEqual(BioWaiter().run(Bio(op: .read, sector: 0, sectors: 64, buffer: data), on: device), .ioError)
        XCTAssertEqual(device.live?.lines(.info), ["0 64 striped 4 /s0 /s1 /s2 /s3 1 AADA"])
    }

    /// dm counts errors per device: a stripe that shares the failing device is marked too,
    /// though the failed I/O went through another stripe.
    func testAnErrorMarksEveryStripeOnThatDevice() throws {
        images[1].fail(0...10)
        let device = try striped("0 64 striped 4 8 /s0 0 /s1 0 /s2 0 /s1 2048")
        let data = UnsafeMutableRawPointer.allocate(byteCount: 8 * 512, alignment: 4096)
        defer { data.deallocate() }
        // Sectors 8..15 are stripe 1's first chunk: /s1 sectors 0..7.
        XCTAssertEqual(BioWaiter().run(Bio(op: .read, sector: 8, sectors: 8, buffer: data), on: device), .ioError)
        XCTAssertEqual(device.live?.lines(.info), ["0 64 striped 4 /s0 /s1 /s2 /s1 1 ADAD"])
    }
}
