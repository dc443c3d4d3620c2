import Glibc
import UDMCore
import UDMTargets
import UDMTestSupport
import XCTest

/// The copy throttle (dm-snap's cow_threshold): once 2048 copies are in progress, a further
/// origin write that needs one is held as a bio, not started, and goes on when copies end.
final class SnapshotThrottleTests: XCTestCase {
    /// The origin's device: bios wait until `open()`, so the copies (its reads) stay in progress.
    final class GatedOrigin: BlockDevice, @unchecked Sendable {
        let name = "real"
        let inner: MemoryDevice
        private let opened = Completion()
        init(sectors: UInt64) { inner = MemoryDevice(name: "real-inner", sectors: sectors, recording: false) }
        var sectors: UInt64 { inner.sectors }
        var discardZeroes: Bool { false }
        func open() { opened.signal() }
        func submitBio(_ bio: Bio) {
            opened.wait()
            bio.submit(to: inner)
        }
    }

    /// Counts ended bios.
    final class Ends: BioCompletion, @unchecked Sendable {
        private let lock = ConditionLock()
        private var ended = 0
        private var failed = 0
        func bioCompleted(_ bio: Bio) {
            lock.withLock {
                ended += 1
                if !bio.status.isOK { failed += 1 }
                lock.broadcast()
            }
        }
        var count: (ended: Int, failed: Int) { lock.withLock { (ended, failed) } }
        /// Waits (bounded) for `total` ends.
        func wait(for total: Int) {
            for _ in 0..<60_000 where count.ended < total { usleep(1000) }
        }
    }

    func testOriginWritesPastTheCopyLimitAreHeldUntilCopiesEnd() throws {
        let limit = 2048
        let chunks = UInt64(limit + 1)
        let real = GatedOrigin(sectors: (chunks + 1) * 8)
        real.inner.fill(1, at: 0, count: Int(real.sectors) * 512)
        let cow = MemoryDevice(name: "cow", sectors: 40_000, recording: false)
        let services = TargetServices()
        func device(_ text: String) throws -> MappedDevice {
            let device = MappedDevice(name: "d")
            device.load(try Table(lines: TableLine.parse(text), registry: BuiltinTargets.registry,
                                  resolver: NamedResolver(devices: ["real": real, "cow": cow]), bioSetSize: 4096, services: services))
            try device.resume()
            return device
        }
        let sectors = real.sectors
        let origin = try device("0 \(sectors) snapshot-origin real")
        let snapshot = try device("0 \(sectors) snapshot real cow P 8")
        defer { real.open() }
        func allocated() -> Int {
            let info = snapshot.live?.lines(.info).first ?? ""
            return Int(info.split(separator: " ")[3].split(separator: "/")[0]) ?? -1
        }
        let start = allocated()
        let data = UnsafeMutableRawPointer.allocate(byteCount: 8 * 512, alignment: 4096)
        defer { data.deallocate() }
        data.initializeMemory(as: UInt8.self, repeating: 2, count: 8 * 512)
        let ends = Ends()
        var bios: [Bio] = []
        for chunk in 0..<chunks {
            let bio = Bio(op: .write, sector: chunk * 8, sectors: 8, buffer: data)
            bio.completion = ends
            bios.append(bio)
            bio.submit(to: origin)
        }
        let whileHeld = allocated()
        XCTAssertEqual(ends.count.ended, 0)
        real.open()
        ends.wait(for: Int(chunks))
        XCTAssertEqual(ends.count.ended, Int(chunks), "every origin write ended")
        XCTAssertEqual(ends.count.failed, 0)
        let final = allocated()
        XCTAssertGreaterThan(whileHeld, start)
        XCTAssertLessThan(whileHeld, final, "the write past the limit started no copy while \(limit) were in progress")
        XCTAssertEqual(final - whileHeld, 8, "it started one chunk's copy later")
        let check = TestBuffer(sectors: 8)
        for chunk in [0, chunks - 1] {
            XCTAssertEqual(runBio(.read, on: snapshot, sector: chunk * 8, buffer: check), .ok)
            XCTAssertEqual(check.bytes[0], 1, "the snapshot kept chunk \(chunk)")
            XCTAssertEqual(real.inner.byte(at: Int(chunk) * 8 * 512), 2, "the origin has the write to chunk \(chunk)")
        }
    }
}
