import Glibc
import UDMCore
import UDMExceptionStore
import UDMTargets
import UDMTestSupport
import XCTest

/// A live device built from `text` over the in-memory devices "real" and "cow".
private func liveDevice(_ text: String, real: MemoryDevice, cow: MemoryDevice, services: TargetServices) throws -> MappedDevice {
    let device = MappedDevice(name: "d")
    device.load(try Table(lines: TableLine.parse(text), registry: BuiltinTargets.registry,
                          resolver: NamedResolver(devices: ["real": real, "cow": cow]), bioSetSize: 4, services: services))
    try device.resume()
    return device
}

/// Snapshot, origin and merge targets over in-memory devices.
final class SnapshotTests: XCTestCase {
    let real = MemoryDevice(name: "real", sectors: 1024, recording: false)
    let cow = MemoryDevice(name: "cow", sectors: 2048, recording: false)
    let services = TargetServices()

    private func device(_ text: String) throws -> MappedDevice {
        try liveDevice(text, real: real, cow: cow, services: services)
    }

    private func write(_ device: BlockDevice, sector: UInt64, sectors: UInt64, value: UInt8) -> BioStatus {
        let data = UnsafeMutableRawPointer.allocate(byteCount: Int(sectors) << 9, alignment: 4096)
        defer { data.deallocate() }
        data.initializeMemory(as: UInt8.self, repeating: value, count: Int(sectors) << 9)
        return BioWaiter().run(Bio(op: .write, sector: sector, sectors: sectors, buffer: data), on: device)
    }

    private func read(_ device: BlockDevice, sector: UInt64) -> UInt8? {
        let data = UnsafeMutableRawPointer.allocate(byteCount: 512, alignment: 4096)
        defer { data.deallocate() }
        guard BioWaiter().run(Bio(op: .read, sector: sector, sectors: 1, buffer: data), on: device).isOK else { return nil }
        return data.load(as: UInt8.self)
    }

    func testOriginWritesCopyOutAndTheSnapshotKeepsItsPointInTime() throws {
        real.fill(1, at: 0, count: 1024 * 512)
        let origin = try device("0 1024 snapshot-origin real")
        let snapshot = try device("0 1024 snapshot real cow P 8")
        XCTAssertEqual(write(origin, sector: 4, sectors: 20, value: 2), .ok)
        XCTAssertEqual(read(origin, sector: 10), 2)
        XCTAssertEqual(read(snapshot, sector: 10), 1)
        XCTAssertEqual(read(snapshot, sector: 30), 1)
        XCTAssertEqual(snapshot.live?.lines(.info), ["0 1024 snapshot \((2 + 3) * 8)/2048 16"], "3 chunks copied")
        XCTAssertEqual(write(snapshot, sector: 100, sectors: 1, value: 3), .ok)
        XCTAssertEqual(read(snapshot, sector: 100), 3)
        XCTAssertEqual(read(snapshot, sector: 101), 1, "the rest of the chunk was copied first")
        XCTAssertEqual(read(origin, sector: 100), 1)
    }

    func testAWholeChunkSnapshotWriteSkipsTheCopy() throws {
        let real = MemoryDevice(name: "real", sectors: 1024)
        let cow = MemoryDevice(name: "cow", sectors: 2048)
        real.fill(1, at: 0, count: 1024 * 512)
        func device(_ text: String) throws -> MappedDevice {
            try liveDevice(text, real: real, cow: cow, services: services)
        }
        _ = try device("0 1024 snapshot-origin real")
        var snapshot = try device("0 1024 snapshot real cow P 8")
        real.clearLog()
        cow.clearLog()
        XCTAssertEqual(write(snapshot, sector: 16, sectors: 16, value: 4), .ok, "chunks 2 and 3, whole")
        XCTAssertEqual(real.seen, [], "nothing read from the origin")
        XCTAssertEqual(cow.seen.filter { $0.op == .read }, [])
        XCTAssertEqual(cow.byte(at: 2 * 8 * 512), 4, "chunk 2 went to the first data chunk")
        XCTAssertEqual(cow.byte(at: 4 * 8 * 512 - 1), 4, "chunk 3 to the second")
        XCTAssertEqual([15, 16, 31, 32].map { read(snapshot, sector: $0) }, [1, 4, 4, 1])
        XCTAssertEqual(read(real, sector: 16), 1, "the origin keeps its data")
        XCTAssertEqual(snapshot.live?.lines(.info), ["0 1024 snapshot \((2 + 2) * 8)/2048 16"])

        real.clearLog()
        XCTAssertEqual(write(snapshot, sector: 40, sectors: 7, value: 5), .ok, "part of chunk 5")
        XCTAssertEqual(real.seen, [.init(op: .read, sector: 40, sectors: 8)], "a partial write copies the chunk first")
        XCTAssertEqual([40, 46, 47].map { read(snapshot, sector: $0) }, [5, 5, 1])

        XCTAssertThrowsError(try device("0 1024 snapshot real cow P 8"), "a second live snapshot over the same COW") {
            XCTAssertTrue("\($0)".contains("COW device cow is in use by a live snapshot"), "\($0)")
        }
        snapshot.suspend()
        snapshot = try device("0 1024 zero")
        // The replaced snapshot goes once the copy job that ended its last write lets go of it,
        // a moment after that write ended: try again for up to 2 s.
        var attempt = try? device("0 1024 snapshot real cow P 8")
        for _ in 0..<200 where attempt == nil {
            usleep(10_000)
            attempt = try? device("0 1024 snapshot real cow P 8")
        }
        let reloaded = try XCTUnwrap(attempt, "the replaced snapshot still holds the COW after 2 s")
        XCTAssertEqual([15, 16, 31, 32, 47].map { read(reloaded, sector: $0) }, [1, 4, 4, 1, 1],
                       "the whole-chunk exceptions were committed")
    }

    /// The kernel's outcomes (Tests/oracle/po-overflow.kernel): once a PO snapshot has
    /// overflowed, every snapshot write fails, even to a chunk that has an exception; reads go
    /// on; an origin write that needs a copy then invalidates it.
    func testAnOverflowedSnapshotFailsEveryWrite() throws {
        let real = MemoryDevice(name: "real", sectors: 1024, recording: false)
        let cow = MemoryDevice(name: "cow", sectors: 128, recording: false)
        real.fill(1, at: 0, count: 1024 * 512)
        let origin = try liveDevice("0 1024 snapshot-origin real", real: real, cow: cow, services: services)
        let snapshot = try liveDevice("0 1024 snapshot real cow PO 8", real: real, cow: cow, services: services)
        for chunk in 0..<UInt64(14) {
            XCTAssertEqual(write(snapshot, sector: chunk * 8, sectors: 8, value: 2), .ok, "chunk \(chunk) fits")
        }
        XCTAssertEqual(write(snapshot, sector: 14 * 8, sectors: 8, value: 2), .ioError, "the COW is full")
        XCTAssertEqual(snapshot.live?.lines(.info), ["0 1024 snapshot Overflow"])
        XCTAssertEqual(write(snapshot, sector: 0, sectors: 8, value: 3), .ioError, "a chunk with an exception")
        XCTAssertEqual(write(snapshot, sector: 1, sectors: 1, value: 3), .ioError, "part of it")
        XCTAssertEqual(write(snapshot, sector: 160, sectors: 8, value: 3), .ioError, "a new chunk")
        XCTAssertEqual(read(snapshot, sector: 0), 2, "the exception's data, unchanged")
        XCTAssertEqual(read(snapshot, sector: 240), 1, "a chunk without an exception")
        XCTAssertEqual(write(origin, sector: 0, sectors: 8, value: 4), .ok, "no copy needed")
        XCTAssertEqual(snapshot.live?.lines(.info), ["0 1024 snapshot Overflow"])
        XCTAssertEqual(write(origin, sector: 320, sectors: 8, value: 4), .ok, "the origin goes on")
        XCTAssertEqual(snapshot.live?.lines(.info), ["0 1024 snapshot Invalid"], "the copy found no room")
        XCTAssertNil(read(snapshot, sector: 0))
        XCTAssertEqual([0, 320].map { real.byte(at: $0 * 512) }, [4, 4])
    }

    func testMergeBringsTheSnapshotsContentBackToTheOrigin() throws {
        real.fill(1, at: 0, count: 1024 * 512)
        let origin = try device("0 1024 snapshot-origin real")
        var snapshot: MappedDevice? = try device("0 1024 snapshot real cow P 8")
        XCTAssertEqual(write(origin, sector: 0, sectors: 64, value: 2), .ok)
        XCTAssertEqual(write(snapshot!, sector: 500, sectors: 8, value: 3), .ok)
        snapshot = nil
        origin.suspend()
        let merge = try device("0 1024 snapshot-merge real cow P 8")
        XCTAssertEqual(read(merge, sector: 10), 1, "the merging origin shows the snapshot at once")
        XCTAssertEqual(read(merge, sector: 500), 3)
        for _ in 0..<200 {
            if merge.live?.lines(.info) == ["0 1024 snapshot-merge 16/2048 16"] { break }
            usleep(10_000)
        }
        XCTAssertEqual(merge.live?.lines(.info), ["0 1024 snapshot-merge 16/2048 16"], "every exception merged")
        XCTAssertEqual([0, 63, 64, 500, 507].map { real.byte(at: $0 * 512) }, [1, 1, 1, 3, 3])
    }

    /// dm refuses a transient snapshot with chunk size 0 ("Chunk size not set", checked on the
    /// 6.1 kernel through dmvm); a persistent one takes the header's or 32.
    func testATransientSnapshotNeedsAChunkSize() {
        let real = MemoryDevice(name: "real", sectors: 1024, recording: false)
        let cow = MemoryDevice(name: "cow", sectors: 1024, recording: false)
        XCTAssertTrue(rejection("0 1024 snapshot real cow N 0", devices: [real, cow]).contains("chunk size not set"))
        XCTAssertEqual(rejection("0 1024 snapshot real cow N 8", devices: [real, cow]), "accepted")
        XCTAssertEqual(rejection("0 1024 snapshot real cow P 0", devices: [real, cow]), "accepted")
    }
}

final class SnapshotMergeAcrossAreasTests: XCTestCase {
    func testMergeOfMoreExceptionsThanOneMetadataAreaHolds() throws {
        try merge(chunks: 300)
    }

    /// Area 0 exactly full: the last record is in the previous area, not the current one.
    func testMergeWhenTheLastAreaIsExactlyFull() throws {
        try merge(chunks: 256)
    }

    private func merge(chunks: UInt64) throws {
        let real = MemoryDevice(name: "real", sectors: 8192, recording: false)
        let cow = MemoryDevice(name: "cow", sectors: 16384, recording: false)
        let services = TargetServices()
        func device(_ text: String) throws -> MappedDevice {
            try liveDevice(text, real: real, cow: cow, services: services)
        }
        real.fill(1, at: 0, count: 8192 * 512)
        let origin = try device("0 8192 snapshot-origin real")
        var snapshot: MappedDevice? = try device("0 8192 snapshot real cow P 8")
        let data = UnsafeMutableRawPointer.allocate(byteCount: 8192 * 512, alignment: 4096)
        defer { data.deallocate() }
        data.initializeMemory(as: UInt8.self, repeating: 2, count: 8192 * 512)
        // Chunks of 8 sectors; area 0 holds 256 records, area 1 takes the rest.
        XCTAssertEqual(BioWaiter().run(Bio(op: .write, sector: 0, sectors: chunks * 8, buffer: data), on: origin), .ok)
        XCTAssertEqual(snapshot?.live?.lines(.info), ["0 8192 snapshot \((2 + chunks + 1) * 8)/16384 24"])
        snapshot = nil
        origin.suspend()
        let merge = try device("0 8192 snapshot-merge real cow P 8")
        for _ in 0..<500 {
            if merge.live?.lines(.info) == ["0 8192 snapshot-merge 16/16384 16"] { break }
            usleep(10_000)
        }
        XCTAssertEqual(merge.live?.lines(.info), ["0 8192 snapshot-merge 16/16384 16"])
        XCTAssertEqual([0, Int(chunks) * 8 - 1, Int(chunks) * 8].map { real.byte(at: $0 * 512) }, [1, 1, 1])
    }
}

final class SnapshotMergeCorruptTests: XCTestCase {
    /// A COW record naming an origin chunk past the origin's end fails the merge instead of
    /// trapping the daemon.
    func testRecordPastTheOriginsEndFailsTheMerge() throws {
        let real = MemoryDevice(name: "real", sectors: 1024, recording: false)
        let cow = MemoryDevice(name: "cow", sectors: 2048, recording: false)
        let store = PersistentStore(cow: cow, chunkSize: 8)
        XCTAssertTrue(try store.read { _, _ in })
        let new = try XCTUnwrap(store.prepare())
        let committed = Completion()
        store.commit(old: UInt64.max, new: new) { _ in committed.signal() }
        committed.wait()
        let merge = MappedDevice(name: "m")
        merge.load(try Table(lines: TableLine.parse("0 1024 snapshot-merge real cow P 8"), registry: BuiltinTargets.registry,
                             resolver: NamedResolver(devices: ["real": real, "cow": cow]), bioSetSize: 4))
        try merge.resume()
        for _ in 0..<200 where merge.live?.lines(.info) != ["0 1024 snapshot-merge Merge failed"] { usleep(10_000) }
        XCTAssertEqual(merge.live?.lines(.info), ["0 1024 snapshot-merge Merge failed"])
    }
}

final class SnapshotMergeSiblingTests: XCTestCase {
    /// While a snapshot with 16-sector chunks merges, an 8 KiB origin write must copy out both
    /// 8-sector chunks of a sibling snapshot: the merging origin cuts I/O at the smallest chunk
    /// of all the origin's snapshots, not its own.
    func testAnOriginWriteDuringAMergeKeepsASiblingWithSmallerChunksIntact() throws {
        let real = MemoryDevice(name: "real", sectors: 1024, recording: false)
        let cow = MemoryDevice(name: "cow", sectors: 2048, recording: false)
        let sibling = MemoryDevice(name: "sibling", sectors: 2048, recording: false)
        let services = TargetServices()
        func device(_ text: String) throws -> MappedDevice {
            let device = MappedDevice(name: "d")
            device.load(try Table(lines: TableLine.parse(text), registry: BuiltinTargets.registry,
                                  resolver: NamedResolver(devices: ["real": real, "cow": cow, "sibling": sibling]),
                                  bioSetSize: 4, services: services))
            try device.resume()
            return device
        }
        func write(_ device: BlockDevice, sector: UInt64, sectors: UInt64, value: UInt8) -> BioStatus {
            let buffer = TestBuffer(sectors: Int(sectors))
            buffer.pointer.initializeMemory(as: UInt8.self, repeating: value, count: Int(sectors) << 9)
            return runBio(.write, on: device, sector: sector, buffer: buffer)
        }
        real.fill(1, at: 0, count: 1024 * 512)
        let origin = try device("0 1024 snapshot-origin real")
        var merging: MappedDevice? = try device("0 1024 snapshot real cow P 16")
        XCTAssertEqual(write(merging!, sector: 0, sectors: 64, value: 3), .ok)
        let siblingSnapshot = try device("0 1024 snapshot real sibling P 8")
        merging = nil
        origin.suspend()
        let merge = try device("0 1024 snapshot-merge real cow P 16")
        XCTAssertEqual(write(merge, sector: 512, sectors: 16, value: 2), .ok, "8 KiB, one chunk of the merging snapshot")
        let after = TestBuffer(sectors: 16)
        XCTAssertEqual(runBio(.read, on: siblingSnapshot, sector: 512, buffer: after), .ok)
        XCTAssertEqual([0, 8 * 512, 16 * 512 - 1].map { after.bytes[$0] }, [1, 1, 1], "both sibling chunks kept their data")
        XCTAssertEqual([512, 527].map { real.byte(at: $0 * 512) }, [2, 2])
        for _ in 0..<200 where merge.live?.lines(.info) != ["0 1024 snapshot-merge 32/2048 32"] { usleep(10_000) }
        XCTAssertEqual(merge.live?.lines(.info), ["0 1024 snapshot-merge 32/2048 32"], "the merge finished")
        XCTAssertEqual([0, 63, 512].map { real.byte(at: $0 * 512) }, [3, 3, 2])
    }
}
