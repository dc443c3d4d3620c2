import UDMCore
import XCTest

final class TableLineTests: XCTestCase {
    func testParsesLinesSkippingCommentsAndBlanks() throws {
        let lines = try TableLine.parse("""
            # a two-line disk
            0 100 linear /a 0

            100 50\tzero   # trailing comment
            """)
        XCTAssertEqual(lines, [
            TableLine(lineNumber: 2, start: 0, length: 100, type: "linear", arguments: ["/a", "0"]),
            TableLine(lineNumber: 4, start: 100, length: 50, type: "zero", arguments: []),
        ])
    }

    func testRejectsNonNumericStartNamingLineAndField() {
        XCTAssertThrowsError(try TableLine.parse("0 10 zero\nx 10 zero")) { error in
            XCTAssertEqual("\(error)", "line 2: start: 'x' is not a sector number")
        }
    }

    func testRejectsNonNumericLength() {
        XCTAssertThrowsError(try TableLine.parse("0 -5 zero")) { error in
            XCTAssertEqual("\(error)", "line 1: length: '-5' is not a sector count")
        }
    }

    func testRejectsLineWithoutTargetType() {
        XCTAssertThrowsError(try TableLine.parse("0 10")) { error in
            XCTAssertTrue("\(error)".hasPrefix("line 1: target type: missing"), "\(error)")
        }
    }
}
