import Glibc
import UDMCore
import UDMTestSupport
import XCTest

final class CopyEngineTests: XCTestCase {
    final class Request: CopyRequest, @unchecked Sendable {
        let ended = Completion()
        private(set) var status: BioStatus?
        override func copyEnded(_ status: BioStatus) {
            self.status = status
            ended.signal()
        }
    }

    /// A pool of 2 jobs and 3 copies: two run, the third waits on the queue (no thread of its
    /// own) and runs once a job frees.
    func testTheJobPoolIsBoundedAndAnExtraCopyWaitsForAJob() {
        let engine = CopyEngine(jobs: 2)
        let source = GateDevice(name: "source", sectors: 64)
        source.inner.fill(7, at: 0, count: 64 * 512)
        let destination = MemoryDevice(name: "destination", sectors: 64, recording: false)
        let requests = (0..<3).map { index in
            let request = Request()
            request.source = source
            request.sourceSector = UInt64(index) * 8
            request.destination = destination
            request.destinationSector = UInt64(index) * 8
            request.sectors = 8
            return request
        }
        defer { source.open() }
        requests.forEach(engine.submit)
        source.waitForArrivals(2)
        XCTAssertEqual(source.arrived, 2, "two copies started")
        XCTAssertEqual(engine.busy, 2)
        // A third job would pick up the third copy at once; give it every chance (bounded).
        for _ in 0..<200 where source.arrived == 2 { usleep(1000) }
        XCTAssertEqual(source.arrived, 2, "the third copy waits for a job")
        XCTAssertNil(requests[2].status)
        source.open()
        for request in requests {
            request.ended.wait()
            XCTAssertEqual(request.status, .ok)
        }
        XCTAssertEqual(source.arrived, 3)
        XCTAssertEqual([0, 8 * 512, 24 * 512 - 1, 24 * 512].map { destination.byte(at: $0) }, [7, 7, 7, 0])
    }

    /// A job's bios and buffer are reused: a copy longer than one piece moves every byte.
    func testACopyOfSeveralPiecesMovesEveryByte() {
        let engine = CopyEngine(jobs: 1)
        let sectors = UInt64(CopyEngine.pieceBytes >> 9) * 2 + 8
        let source = MemoryDevice(name: "source", sectors: sectors, recording: false)
        let destination = MemoryDevice(name: "destination", sectors: sectors, recording: false)
        for piece in 0..<3 { source.fill(UInt8(piece + 1), at: piece * CopyEngine.pieceBytes, count: min(CopyEngine.pieceBytes, Int(sectors) * 512 - piece * CopyEngine.pieceBytes)) }
        let request = Request()
        request.source = source
        request.destination = destination
        request.sectors = sectors
        engine.submit(request)
        request.ended.wait()
        XCTAssertEqual(request.status, .ok)
        XCTAssertEqual([0, CopyEngine.pieceBytes, 2 * CopyEngine.pieceBytes, Int(sectors) * 512 - 1].map { destination.byte(at: $0) },
                       [1, 2, 3, 3])
    }
}
