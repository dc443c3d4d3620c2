import Foundation
import UDMCore
import UDMExceptionStore
import UDMTargets
import UDMTestSupport
import XCTest

/// udm against COW files the Linux kernel wrote (Tests/fixtures/kernel, made by its
/// make-fixtures.sh under the real device-mapper): udm must read, show and merge each one as
/// the kernel did. The fixtures are loaded into memory devices; the files are never written.
final class KernelFixtureTests: XCTestCase {
    /// multi-area: 136 exceptions in chunks of 2 sectors, 64 records per metadata area.
    func testMultiAreaStoreHoldsTheRecordsTheKernelWrote() throws {
        let fixture = try KernelFixture("multi-area")
        let order = try fixture.exceptionOrder()
        XCTAssertEqual(order.count, 136)
        let store = PersistentStore(cow: try fixture.device("cow"), chunkSize: 0)
        var records: [KernelFixture.Record] = []
        XCTAssertTrue(try store.read { records.append(.init(old: $0, new: $1)) })
        XCTAssertEqual(store.chunkSize, 2, "the header's chunk size")
        XCTAssertEqual(records, KernelFixture.records(oldChunks: order, recordsPerArea: 64))
        XCTAssertEqual(records.last?.new, 139, "the table runs into metadata area 2 (chunk 131)")
        XCTAssertEqual("\(store.usage.allocated)/\(store.usage.total) \(store.usage.metadata)",
                       try fixture.statusFields("status"))
    }

    func testMultiAreaSnapshotShowsWhatTheKernelsSnapshotShowed() throws {
        let fixture = try KernelFixture("multi-area")
        let origin = try fixture.device("origin")
        let cow = try fixture.device("cow")
        XCTAssertEqual(SHA256.hex(origin.contents()), try fixture.value("origin_sha256"), "the origin file is what the kernel left")
        let table = "0 512 snapshot origin cow P 2"
        XCTAssertEqual(try fixture.loadedStatus(table, devices: [origin, cow]), [try fixture.value("status_loaded")])
        let snapshot = try makeDevice(table, devices: [origin, cow])
        XCTAssertEqual(snapshot.live?.lines(.info), [try fixture.value("status")])
        XCTAssertEqual(SHA256.hex(snapshot.contents()), try fixture.value("snapshot_sha256"))
        assertSameBytes(cow.contents(), try fixture.bytes("cow"), "the COW after reading the snapshot")
    }

    /// The header's chunk size wins over the table's; 0 in the table means the header's.
    func testMultiAreaHeaderChunkSizeWinsOverTheTables() throws {
        let fixture = try KernelFixture("multi-area")
        let origin = try fixture.device("origin")
        let cow = try fixture.device("cow")
        for tableChunk in [0, 8] {
            let table = "0 512 snapshot origin cow P \(tableChunk)"
            let kernelLine = try fixture.value("table_loaded_chunk_\(tableChunk)")
            // The kernel names the devices major:minor; compare what follows them.
            XCTAssertEqual(try fixture.loadedLines(table, .table, devices: [origin, cow]).map { $0.split(separator: " ").suffix(2) },
                           [kernelLine.split(separator: " ").suffix(2)], "table chunk size \(tableChunk)")
        }
        XCTAssertEqual(try fixture.loadedStatus("0 512 snapshot origin cow P 8", devices: [origin, cow]),
                       [try fixture.value("status_loaded_chunk_8")])
    }

    /// invalidated: the kernel ran out of COW space and marked the store invalid (valid = 0).
    func testInvalidatedSnapshotLoadsInvalidAndLeavesTheCOWAlone() throws {
        let fixture = try KernelFixture("invalidated")
        let origin = try fixture.device("origin")
        let cow = try fixture.device("cow")
        let services = TargetServices()
        let table = "0 128 snapshot origin cow P 2"
        XCTAssertEqual(try fixture.loadedStatus(table, devices: [origin, cow]), [try fixture.value("status_loaded")])
        let originDevice = try makeDevice("0 128 snapshot-origin origin", devices: [origin, cow], services: services)
        let snapshot = try makeDevice(table, devices: [origin, cow], services: services)
        XCTAssertEqual(snapshot.live?.lines(.info), [try fixture.value("status_reloaded")])
        XCTAssertEqual(try fixture.value("snapshot_reloaded_read"), "failed")
        XCTAssertEqual(runBio(.read, on: snapshot, buffer: TestBuffer(sectors: 1)), .ioError)
        XCTAssertEqual(try fixture.value("snapshot_reloaded_write"), "failed")
        XCTAssertEqual(runBio(.write, on: snapshot, sector: 8, buffer: TestBuffer(sectors: 2)), .ioError)
        XCTAssertEqual(runBio(.write, on: originDevice, sector: 40, buffer: TestBuffer(sectors: 2, seed: 9)), .ok,
                       "the origin goes on without the invalid snapshot")
        XCTAssertEqual(origin.bytes(at: 40 * 512, count: 1024), TestBuffer(sectors: 2, seed: 9).bytes)
        XCTAssertEqual(snapshot.live?.lines(.info), [try fixture.value("status_reloaded")])
        XCTAssertEqual(SHA256.hex(cow.contents()), try fixture.value("cow_sha256"))
        assertSameBytes(cow.contents(), try fixture.bytes("cow"), "the COW after using the invalid snapshot")
    }

    /// mid-merge: the kernel merged from the last exception back to origin chunk 190's (record
    /// 70), where an origin write error stopped it.
    func testMidMergeStoreHoldsTheRecordsTheKernelLeft() throws {
        let fixture = try KernelFixture("mid-merge")
        let order = try KernelFixture("multi-area").exceptionOrder()
        let stop = try XCTUnwrap(order.firstIndex(of: 190))
        let left = Array(order[...stop])
        XCTAssertEqual(left.count, 71)
        XCTAssertEqual(try fixture.statusFields("status_end"), "Merge failed")
        let store = PersistentStore(cow: try fixture.device("cow"), chunkSize: 0)
        var records: [KernelFixture.Record] = []
        XCTAssertTrue(try store.read { records.append(.init(old: $0, new: $1)) })
        XCTAssertEqual(records, KernelFixture.records(oldChunks: left, recordsPerArea: 64))
        XCTAssertEqual("\(store.usage.allocated)/\(store.usage.total) \(store.usage.metadata)",
                       try fixture.statusFields("status_loaded_after"))
    }

    func testFinishingTheKernelsMergeGivesTheKernelsMergedOrigin() throws {
        let fixture = try KernelFixture("mid-merge")
        let merged = try KernelFixture("merged")
        let origin = try fixture.device("origin")
        let cow = try fixture.device("cow")
        XCTAssertEqual(SHA256.hex(origin.contents()), try fixture.value("origin_sha256"))
        let table = "0 512 snapshot-merge origin cow P 2"
        XCTAssertEqual(try fixture.loadedStatus(table, devices: [origin, cow]), [try fixture.value("status_loaded_after")])
        try mergeToTheEnd(table, origin: origin, cow: cow, merged: merged)
    }

    /// merge-powercut: the kernel resumed mid-merge's merge and lost power after copying
    /// chunk 190 to the origin, before clearing its record: udm merges it again, as the kernel
    /// did when it resumed.
    func testMergeCutByPowerLossEndsAsTheKernelsResumedMerge() throws {
        let fixture = try KernelFixture("merge-powercut")
        let merged = try KernelFixture("merged")
        let origin = try fixture.device("origin")
        let cow = try fixture.device("cow")
        XCTAssertEqual(origin.bytes(at: 190 * 1024, count: 1024), cow.bytes(at: 73 * 1024, count: 1024),
                       "chunk 190 was copied to the origin")
        assertSameBytes(cow.contents(), try KernelFixture("mid-merge").bytes("cow"), "the COW at the power cut")
        let table = "0 512 snapshot-merge origin cow P 2"
        XCTAssertEqual(try fixture.loadedStatus(table, devices: [origin, cow]), [try fixture.value("resumed_status_loaded_before")])
        XCTAssertEqual(try fixture.value("resumed_status_end"), try merged.value("status_end"))
        XCTAssertEqual(try fixture.value("resumed_origin_sha256"), try merged.value("origin_sha256"))
        try mergeToTheEnd(table, origin: origin, cow: cow, merged: merged)
    }

    func testMergingTheMultiAreaSnapshotGivesTheKernelsMergedOriginAndCOW() throws {
        let fixture = try KernelFixture("multi-area")
        let merged = try KernelFixture("merged")
        let origin = try fixture.device("origin")
        let cow = try fixture.device("cow")
        let table = "0 512 snapshot-merge origin cow P 2"
        XCTAssertEqual(try fixture.loadedStatus(table, devices: [origin, cow]), [try merged.value("status_loaded_before")])
        try mergeToTheEnd(table, origin: origin, cow: cow, merged: merged)
    }

    /// The multi-area script's writes, replayed on udm over a fresh origin and COW: udm must
    /// write the same COW and origin bytes as the kernel.
    func testUDMWritesTheMultiAreaCOWTheKernelWrote() throws {
        let fixture = try KernelFixture("multi-area")
        let replay = try Replay(originSectors: 512, cowSectors: 320, chunkSize: 2)
        XCTAssertEqual(SHA256.hex(replay.origin.contents()), try fixture.value("origin_before_sha256"), "the script's origin pattern")
        var order: [UInt64] = []
        for i: UInt64 in 0..<80 {
            let chunk = i * 37 % 200
            replay.write(replay.originDevice, chunk * 2, "origin write \(i) chunk \(chunk)", bytes: 1024)
            order.append(chunk)
        }
        for chunk: UInt64 in 200..<230 {
            replay.write(replay.originDevice, chunk * 2, "origin write chunk \(chunk)", bytes: 1024)
            order.append(chunk)
        }
        for chunk: UInt64 in 230..<256 {
            if chunk % 2 == 0 {
                replay.write(replay.snapshot, chunk * 2, "snapshot write chunk \(chunk)", bytes: 1024)
            } else {
                replay.write(replay.snapshot, chunk * 2 + 1, "snapshot write sector \(chunk * 2 + 1)", bytes: 512)
            }
            order.append(chunk)
        }
        replay.write(replay.originDevice, 0, "origin rewrite chunk 0", bytes: 1024)
        replay.write(replay.snapshot, 420, "snapshot write over the exception of chunk 210", bytes: 512)
        XCTAssertEqual(order, try fixture.exceptionOrder(), "the replay makes the script's writes")
        replay.drain()
        XCTAssertEqual(replay.snapshot.live?.lines(.info), [try fixture.value("status")])
        XCTAssertEqual(SHA256.hex(replay.snapshot.contents()), try fixture.value("snapshot_sha256"))
        assertSameBytes(replay.origin.contents(), try fixture.bytes("origin"), "the origin after the writes")
        assertSameBytes(replay.cow.contents(), try fixture.bytes("cow"), "the COW after the writes")
    }

    /// The invalidated script's writes, replayed: udm runs out of COW space at the same write
    /// and leaves the same COW (header valid = 0, area 0 with its 6 records) as the kernel.
    func testUDMInvalidatesTheSnapshotAsTheKernelDid() throws {
        let fixture = try KernelFixture("invalidated")
        let replay = try Replay(originSectors: 128, cowSectors: 16, chunkSize: 2)
        for chunk: UInt64 in 0..<10 {
            replay.write(replay.originDevice, chunk * 2, "origin write chunk \(chunk)", bytes: 1024)
        }
        replay.drain()
        XCTAssertEqual(replay.snapshot.live?.lines(.info), [try fixture.value("status")])
        XCTAssertEqual(try fixture.value("snapshot_read"), "failed")
        XCTAssertEqual(runBio(.read, on: replay.snapshot, buffer: TestBuffer(sectors: 1)), .ioError)
        XCTAssertEqual(SHA256.hex(replay.origin.contents()), try fixture.value("origin_sha256"))
        assertSameBytes(replay.cow.contents(), try fixture.bytes("cow"), "the COW after the writes")
    }

    /// overflowed: a PO snapshot whose COW filled up on a snapshot write. The kernel fails
    /// every later snapshot write, even to a chunk that has an exception; reads go on.
    func testUDMOverflowsTheSnapshotAsTheKernelDid() throws {
        let fixture = try KernelFixture("overflowed")
        let replay = try Replay(originSectors: 128, cowSectors: 16, chunkSize: 2, store: "PO")
        for chunk: UInt64 in 0..<6 {
            replay.write(replay.snapshot, chunk * 2, "snapshot write chunk \(chunk)", bytes: 1024)
        }
        XCTAssertEqual(replay.snapshot.live?.lines(.info), [try fixture.value("status_full")])
        XCTAssertEqual(replay.attempt(replay.snapshot, 12, "snapshot write chunk 6", bytes: 1024), try fixture.value("write_chunk_6"))
        XCTAssertEqual(replay.snapshot.live?.lines(.info), [try fixture.value("status_overflowed")])
        XCTAssertEqual(replay.attempt(replay.snapshot, 2, "snapshot rewrite chunk 1", bytes: 1024), try fixture.value("write_chunk_1"),
                       "a write to a chunk with an exception, once overflowed")
        XCTAssertEqual(runBio(.read, on: replay.snapshot, buffer: TestBuffer(sectors: 1)).isOK ? "ok" : "failed",
                       try fixture.value("read_chunk_0"))
        XCTAssertEqual(replay.snapshot.live?.lines(.info), [try fixture.value("status_after")])
        XCTAssertEqual(SHA256.hex(replay.snapshot.contents()), try fixture.value("snapshot_sha256"))
        replay.drain()
        assertSameBytes(replay.cow.contents(), try fixture.bytes("cow"), "the COW after the writes")
        assertSameBytes(replay.origin.contents(), try fixture.bytes("origin"), "the origin after the writes")
    }

    /// Overflow is not recorded on the COW: loaded again, the snapshot is valid and full.
    func testOverflowedCOWLoadsValidWithItsRecords() throws {
        let fixture = try KernelFixture("overflowed")
        let origin = try fixture.device("origin")
        let cow = try fixture.device("cow")
        let store = PersistentStore(cow: cow, chunkSize: 0)
        var records: [KernelFixture.Record] = []
        XCTAssertTrue(try store.read { records.append(.init(old: $0, new: $1)) })
        XCTAssertEqual(records, KernelFixture.records(oldChunks: Array(0..<6), recordsPerArea: 64))
        let table = "0 128 snapshot origin cow PO 2"
        XCTAssertEqual(try fixture.loadedStatus(table, devices: [origin, cow]), [try fixture.value("status_loaded")])
    }

    /// Runs the merge in `table` until udm reports it done, then compares the origin and the
    /// COW with the kernel's merged ones: the whole origin, the COW's metadata chunks one by
    /// one (header and areas, which say what differs), then the whole COW.
    private func mergeToTheEnd(_ table: String, origin: MemoryDevice, cow: MemoryDevice, merged: KernelFixture) throws {
        let done = try merged.value("status_end")
        let merge = try makeDevice(table, devices: [origin, cow])
        for _ in 0..<2000 where merge.live?.lines(.info) != [done] { usleep(5000) }
        XCTAssertEqual(merge.live?.lines(.info), [done])
        XCTAssertEqual(SHA256.hex(merge.contents()), try merged.value("merge_device_sha256"))
        XCTAssertEqual(SHA256.hex(origin.contents()), try merged.value("origin_sha256"))
        assertSameBytes(origin.contents(), try merged.bytes("origin"), "the merged origin")
        let kernelCOW = try merged.bytes("cow")
        let udmCOW = cow.contents()
        for chunk in [0, 1, 66, 131] {
            assertSameBytes(Array(udmCOW[chunk * 1024..<(chunk + 1) * 1024]), Array(kernelCOW[chunk * 1024..<(chunk + 1) * 1024]),
                            "COW metadata chunk \(chunk) after the merge")
        }
        assertSameBytes(udmCOW, kernelCOW, "the COW after the merge")
    }

    /// udm's bytes against the kernel's, reporting the first difference rather than both arrays.
    private func assertSameBytes(_ udm: [UInt8], _ kernel: [UInt8], _ what: String, line: UInt = #line) {
        guard udm != kernel else { return }
        let common = min(udm.count, kernel.count)
        let at = (0..<common).first { udm[$0] != kernel[$0] } ?? common
        let udmByte = at < udm.count ? "\(udm[at])" : "end"
        let kernelByte = at < kernel.count ? "\(kernel[at])" : "end"
        XCTFail("\(what): udm differs from the kernel first at byte \(at): \(udmByte) vs \(kernelByte)", line: line)
    }
}

/// One folder of Tests/fixtures/kernel: its image files and the kernel's report (kernel.txt,
/// `key=value` lines).
private struct KernelFixture {
    struct Record: Equatable {
        let old: UInt64
        let new: UInt64
    }

    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("../fixtures/kernel").standardized

    let folder: URL
    let report: [String: String]

    init(_ name: String) throws {
        folder = Self.root.appendingPathComponent(name)
        let text = try String(contentsOf: folder.appendingPathComponent("kernel.txt"), encoding: .utf8)
        var report: [String: String] = [:]
        for line in text.split(separator: "\n") {
            guard let equals = line.firstIndex(of: "=") else { continue }
            report[String(line[..<equals])] = String(line[line.index(after: equals)...])
        }
        self.report = report
    }

    func value(_ key: String) throws -> String {
        try XCTUnwrap(report[key], "\(folder.lastPathComponent)/kernel.txt has no \(key)")
    }

    /// A status line without its "<begin> <length> <target>" prefix.
    func statusFields(_ key: String) throws -> String {
        try value(key).split(separator: " ", maxSplits: 3).dropFirst(3).joined()
    }

    /// The origin chunks of the exceptions, in the order the script made the kernel take them.
    func exceptionOrder() throws -> [UInt64] {
        try value("exception_order").split(separator: " ").map { try XCTUnwrap(UInt64($0)) }
    }

    func bytes(_ image: String) throws -> [UInt8] {
        [UInt8](try Data(contentsOf: folder.appendingPathComponent("\(image).img")))
    }

    /// A scratch in-memory copy of `image`.img, named `image`.
    func device(_ image: String) throws -> MemoryDevice {
        let bytes = try bytes(image)
        let device = MemoryDevice(name: image, sectors: UInt64(bytes.count >> 9), recording: false)
        let status = bytes.withUnsafeBytes {
            BioWaiter().run(Bio(op: .write, sector: 0, sectors: device.sectors, buffer: UnsafeMutableRawPointer(mutating: $0.baseAddress!)),
                            on: device)
        }
        XCTAssertEqual(status, .ok)
        return device
    }

    /// The status of `table` loaded but never resumed (`dmsetup status --inactive`).
    func loadedStatus(_ table: String, devices: [MemoryDevice]) throws -> [String] {
        try loadedLines(table, .info, devices: devices)
    }

    /// `kind` lines of `table` loaded but never resumed (`dmsetup status|table --inactive`).
    func loadedLines(_ table: String, _ kind: StatusKind, devices: [MemoryDevice]) throws -> [String] {
        let device = MappedDevice(name: "probe")
        device.load(try Table(lines: TableLine.parse(table), registry: BuiltinTargets.registry,
                              resolver: NamedResolver(devices: Dictionary(uniqueKeysWithValues: devices.map { ($0.name, $0) })),
                              bioSetSize: 4, services: TargetServices()))
        return device.loaded?.lines(kind) ?? []
    }

    /// The kernel's layout for exceptions taken in `oldChunks` order into a fresh store: data
    /// chunks from 2 on, skipping each metadata area's chunk (1 + i·(recordsPerArea + 1)).
    static func records(oldChunks: [UInt64], recordsPerArea: UInt64) -> [Record] {
        var new: UInt64 = 1
        return oldChunks.map { old in
            new += 1
            if new % (recordsPerArea + 1) == 1 { new += 1 }
            return Record(old: old, new: new)
        }
    }
}

/// A fresh origin (the guest scripts' pattern: sector s holds "origin sector s", space
/// padded, newline) and zeroed COW, with a snapshot-origin and a persistent snapshot over them.
private struct Replay {
    let origin: MemoryDevice
    let cow: MemoryDevice
    let originDevice: MappedDevice
    let snapshot: MappedDevice
    /// One copy job: `drain` runs after the copy in progress.
    private let services = TargetServices(copyEngine: CopyEngine(jobs: 1))

    init(originSectors: UInt64, cowSectors: UInt64, chunkSize: UInt64, store: String = "P") throws {
        origin = MemoryDevice(name: "origin", sectors: originSectors, recording: false)
        cow = MemoryDevice(name: "cow", sectors: cowSectors, recording: false)
        for sector in 0..<originSectors {
            Self.attempt(origin, sector, "origin sector \(sector)", bytes: 512)
        }
        originDevice = try makeDevice("0 \(originSectors) snapshot-origin origin", devices: [origin, cow], services: services)
        snapshot = try makeDevice("0 \(originSectors) snapshot origin cow \(store) \(chunkSize)", devices: [origin, cow],
                                  services: services)
    }

    /// Writes `text`, space padded to `bytes` - 1 and a newline, at `sector` (as the scripts'
    /// put); "ok" or "failed", as the scripts report it.
    @discardableResult
    static func attempt(_ device: BlockDevice, _ sector: UInt64, _ text: String, bytes: Int) -> String {
        var data = [UInt8](text.utf8) + [UInt8](repeating: 0x20, count: bytes - 1 - text.utf8.count) + [0x0A]
        let status = data.withUnsafeMutableBytes {
            BioWaiter().run(Bio(op: .write, sector: sector, sectors: UInt64(bytes >> 9), buffer: $0.baseAddress!), on: device)
        }
        return status.isOK ? "ok" : "failed"
    }

    @discardableResult
    func attempt(_ device: BlockDevice, _ sector: UInt64, _ text: String, bytes: Int) -> String {
        Self.attempt(device, sector, text, bytes: bytes)
    }

    /// A write that must succeed.
    func write(_ device: BlockDevice, _ sector: UInt64, _ text: String, bytes: Int, line: UInt = #line) {
        XCTAssertEqual(attempt(device, sector, text, bytes: bytes), "ok", "writing \(text)", line: line)
    }

    /// Waits until the copy worker has run everything queued so far (an invalidation's header
    /// write runs there after the I/O that caused it has ended).
    func drain() {
        let done = Completion()
        services.copyEngine.perform { done.signal() }
        done.wait()
    }
}

private extension BlockDevice {
    /// Every byte of the device, read through its mapping.
    func contents() -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: Int(sectors) << 9)
        let status = bytes.withUnsafeMutableBytes {
            BioWaiter().run(Bio(op: .read, sector: 0, sectors: sectors, buffer: $0.baseAddress!), on: self)
        }
        XCTAssertEqual(status, .ok, "reading \(name)")
        return bytes
    }
}

/// SHA-256 (FIPS 180-4), to compare with the sums the kernel's VM printed; Foundation on
/// Linux has none.
private enum SHA256 {
    private static let k: [UInt32] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
    ]

    static func hex(_ message: [UInt8]) -> String {
        var h: [UInt32] = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19]
        var padded = message + [0x80]
        padded += [UInt8](repeating: 0, count: (120 - padded.count % 64) % 64)
        padded += (0..<8).map { UInt8(truncatingIfNeeded: (UInt64(message.count) * 8) >> (56 - 8 * $0)) }
        var w = [UInt32](repeating: 0, count: 64)
        for block in stride(from: 0, to: padded.count, by: 64) {
            for i in 0..<16 {
                w[i] = (0..<4).reduce(0) { $0 << 8 | UInt32(padded[block + 4 * i + $1]) }
            }
            for i in 16..<64 {
                let s0 = rotate(w[i - 15], 7) ^ rotate(w[i - 15], 18) ^ (w[i - 15] >> 3)
                let s1 = rotate(w[i - 2], 17) ^ rotate(w[i - 2], 19) ^ (w[i - 2] >> 10)
                w[i] = w[i - 16] &+ s0 &+ w[i - 7] &+ s1
            }
            var (a, b, c, d, e, f, g, hh) = (h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7])
            for i in 0..<64 {
                let t1 = hh &+ (rotate(e, 6) ^ rotate(e, 11) ^ rotate(e, 25)) &+ ((e & f) ^ (~e & g)) &+ k[i] &+ w[i]
                let t2 = (rotate(a, 2) ^ rotate(a, 13) ^ rotate(a, 22)) &+ ((a & b) ^ (a & c) ^ (b & c))
                (hh, g, f, e, d, c, b, a) = (g, f, e, d &+ t1, c, b, a, t1 &+ t2)
            }
            for (i, value) in [a, b, c, d, e, f, g, hh].enumerated() { h[i] = h[i] &+ value }
        }
        return h.map { String($0, radix: 16).leftPadded(to: 8) }.joined()
    }

    private static func rotate(_ x: UInt32, _ n: UInt32) -> UInt32 { x >> n | x << (32 - n) }
}

private extension String {
    func leftPadded(to width: Int) -> String { String(repeating: "0", count: max(0, width - count)) + self }
}
