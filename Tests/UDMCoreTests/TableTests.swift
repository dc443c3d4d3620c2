import UDMCore
import UDMTargets
import UDMTestSupport
import XCTest

final class TableTests: XCTestCase {
    let devices = ["/a": MemoryDevice(name: "/a", sectors: 1000), "/b": MemoryDevice(name: "/b", sectors: 1000)]

    private func rejection(_ text: String) -> String {
        do {
            _ = try makeDevice(text, devices: devices)
            return "accepted"
        } catch {
            return "\(error)"
        }
    }

    func testRejectsGap() {
        XCTAssertEqual(rejection("0 10 zero\n20 10 zero"), "line 2: start: 20: gap: sectors 10..19 are not mapped")
    }

    func testRejectsOverlap() {
        XCTAssertEqual(rejection("0 10 zero\n5 10 zero"), "line 2: start: 5: overlaps the previous line, which ends at sector 10")
    }

    func testRejectsTableNotStartingAtZero() {
        XCTAssertTrue(rejection("8 10 zero").hasPrefix("line 1: start: 8: gap"))
    }

    func testRejectsZeroLength() {
        XCTAssertEqual(rejection("0 0 zero"), "line 1: length: must be greater than zero")
    }

    func testRejectsUnknownTarget() {
        XCTAssertEqual(rejection("0 10 mirror /a 0"), "line 1: target type: unknown target type 'mirror'")
    }

    func testRejectsBadLinearOffset() {
        XCTAssertEqual(rejection("0 10 linear /a zz"), "line 1: argument 2 of linear: invalid device sector 'zz'")
    }

    func testRejectsLinearArgumentCount() {
        XCTAssertTrue(rejection("0 10 linear /a").hasPrefix("line 1: linear: invalid argument count"))
    }

    func testRejectsMissingDevice() {
        XCTAssertTrue(rejection("0 10 linear /missing 0").hasPrefix("line 1: argument 1 of linear: cannot open device /missing"))
    }

    func testRejectsDeviceTooSmall() {
        XCTAssertTrue(rejection("0 10 zero\n10 100 linear /a 950").hasPrefix("line 2: argument 1 of linear: device /a is too small"))
    }

    func testRejectsArgumentsToZero() {
        XCTAssertEqual(rejection("0 10 zero x"), "line 1: argument 1 of zero: zero takes no arguments, got 1")
    }

    func testRejectsEmptyTable() {
        XCTAssertEqual(rejection("# nothing\n"), "the table has no lines")
    }

    func testLookupFindsTheTargetHoldingEachSector() throws {
        let device = try makeDevice("0 10 zero\n10 5 zero\n15 100 zero", devices: devices)
        let table = try XCTUnwrap(device.live)
        XCTAssertEqual([0, 9, 10, 14, 15, 114].map(table.entryIndex(for:)), [0, 0, 1, 1, 2, 2])
        XCTAssertEqual(table.sectors, 115)
    }

    func testTableAndStatusLinesAreDmsetupsAndRoundTrip() throws {
        let text = "0 100 linear /a 10\n100 20 error\n120 30 zero"
        let table = try XCTUnwrap(makeDevice(text, devices: devices).live)
        XCTAssertEqual(table.lines(.table), ["0 100 linear /a 10", "100 20 error ", "120 30 zero "])
        XCTAssertEqual(table.lines(.info), ["0 100 linear ", "100 20 error ", "120 30 zero "])
        let again = try XCTUnwrap(makeDevice(table.lines(.table).joined(separator: "\n"), devices: devices).live)
        XCTAssertEqual(again.lines(.table), table.lines(.table))
    }

    func testBioSetIsNeverSmallerThanOne() throws {
        let table = try XCTUnwrap(makeDevice("0 10 zero", devices: devices, bioSetSize: 1).live)
        XCTAssertEqual(table.bioSet.capacity, 1)
    }
}
