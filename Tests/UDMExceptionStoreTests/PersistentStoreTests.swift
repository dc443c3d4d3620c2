import UDMCore
import UDMExceptionStore
import UDMTestSupport
import XCTest

final class PersistentStoreTests: XCTestCase {
    private func bytes(_ device: MemoryDevice, _ offset: Int, _ count: Int) -> [UInt8] {
        (0..<count).map { device.byte(at: offset + $0) }
    }

    private func le64(_ device: MemoryDevice, _ offset: Int) -> UInt64 {
        (0..<8).reduce(UInt64(0)) { $0 | UInt64(device.byte(at: offset + $1)) << (8 * UInt64($1)) }
    }

    private func commitAndWait(_ store: ExceptionStore, old: UInt64, new: UInt64) -> Bool {
        let result = ResultBox()
        store.commit(old: old, new: new) { result.set($0) }
        return result.value!
    }

    func testNewStoreWritesTheKernelsHeaderAndRecordsAtTheirOffsets() throws {
        let cow = MemoryDevice(name: "cow", sectors: 16 * 100)
        let store = PersistentStore(cow: cow, chunkSize: 16)
        XCTAssertTrue(try store.read { _, _ in XCTFail("a new store has no exceptions") })
        // "SnAp", valid 1, version 1, chunk size 16, little-endian.
        XCTAssertEqual(bytes(cow, 0, 16), [0x53, 0x6E, 0x41, 0x70, 1, 0, 0, 0, 1, 0, 0, 0, 16, 0, 0, 0])
        XCTAssertEqual(store.usage.allocated, 32)
        XCTAssertEqual(store.usage.metadata, 32)

        let first = try XCTUnwrap(store.prepare())
        XCTAssertTrue(commitAndWait(store, old: 7, new: first))
        let second = try XCTUnwrap(store.prepare())
        XCTAssertTrue(commitAndWait(store, old: 0x1_0000_0005, new: second))
        XCTAssertEqual([first, second], [2, 3], "data starts at chunk 2, after header and area 0")
        let area0 = 1 * 16 * 512
        XCTAssertEqual(le64(cow, area0), 7)
        XCTAssertEqual(le64(cow, area0 + 8), 2)
        XCTAssertEqual(le64(cow, area0 + 16), 0x1_0000_0005)
        XCTAssertEqual(le64(cow, area0 + 24), 3)
        XCTAssertEqual(le64(cow, area0 + 40), 0, "end-of-table marker")
        XCTAssertEqual(store.usage.allocated, 4 * 16)
    }

    func testRecordsAreWrittenOnlyWhenNoPreparedExceptionIsOutstanding() throws {
        let cow = MemoryDevice(name: "cow", sectors: 16 * 100)
        let store = PersistentStore(cow: cow, chunkSize: 16)
        _ = try store.read { _, _ in }
        let a = try XCTUnwrap(store.prepare())
        let b = try XCTUnwrap(store.prepare())
        let firstDone = ResultBox()
        store.commit(old: 1, new: a) { firstDone.set($0) }
        XCTAssertNil(firstDone.value, "waits for the other prepared exception")
        XCTAssertEqual(le64(cow, 16 * 512 + 8), 0)
        XCTAssertTrue(commitAndWait(store, old: 2, new: b))
        XCTAssertEqual(firstDone.value, true)
        XCTAssertEqual(le64(cow, 16 * 512 + 8), a)
    }

    func testReloadRestoresEveryExceptionAcrossAreasAndSkipsMetadataChunks() throws {
        // chunk 1 sector: 32 records per area, areas at chunks 1, 34, 67, ...
        let cow = MemoryDevice(name: "cow", sectors: 200)
        let store = PersistentStore(cow: cow, chunkSize: 1)
        _ = try store.read { _, _ in }
        var written: [(UInt64, UInt64)] = []
        for old in 0..<70 as Range<UInt64> {
            let new = try XCTUnwrap(store.prepare())
            XCTAssertNotEqual(new % 33, 1, "never a metadata chunk")
            XCTAssertTrue(commitAndWait(store, old: old * 3, new: new))
            written.append((old * 3, new))
        }
        XCTAssertEqual(store.usage.metadata, 4, "area 2 is current")
        let again = PersistentStore(cow: cow, chunkSize: 0)
        var read: [(UInt64, UInt64)] = []
        XCTAssertTrue(try again.read { read.append(($0, $1)) })
        XCTAssertEqual(read.map(\.0), written.map(\.0))
        XCTAssertEqual(read.map(\.1), written.map(\.1))
        XCTAssertEqual(again.chunkSize, 1)
        XCTAssertEqual(again.usage.allocated, store.usage.allocated)
        XCTAssertEqual(again.prepare(), store.prepare(), "both allocate the same next chunk")
    }

    func testHeaderChunkSizeWinsOverTheTables() throws {
        let cow = MemoryDevice(name: "cow", sectors: 1000)
        _ = try PersistentStore(cow: cow, chunkSize: 8).read { _, _ in }
        let again = PersistentStore(cow: cow, chunkSize: 32)
        _ = try again.read { _, _ in }
        XCTAssertEqual(again.chunkSize, 8)
    }

    func testFullDeviceRefusesToPrepare() throws {
        let cow = MemoryDevice(name: "cow", sectors: 8 * 5)
        let store = PersistentStore(cow: cow, chunkSize: 8)
        _ = try store.read { _, _ in }
        XCTAssertEqual(store.prepare(), 2)
        XCTAssertEqual(store.prepare(), 3)
        XCTAssertEqual(store.prepare(), 4)
        XCTAssertNil(store.prepare())
    }

    func testInvalidatedStoreLoadsAsInvalid() throws {
        let cow = MemoryDevice(name: "cow", sectors: 1000)
        let store = PersistentStore(cow: cow, chunkSize: 8)
        _ = try store.read { _, _ in }
        store.invalidate()
        XCTAssertEqual(bytes(cow, 4, 4), [0, 0, 0, 0])
        XCTAssertFalse(try PersistentStore(cow: cow, chunkSize: 8).read { _, _ in })
    }

    private func refusal(_ prepare: (MemoryDevice) -> Void, sectors: UInt64 = 1000) -> (String, [UInt8]) {
        let cow = MemoryDevice(name: "cow", sectors: sectors)
        prepare(cow)
        let before = bytes(cow, 0, 4096)
        do {
            _ = try PersistentStore(cow: cow, chunkSize: 8).read { _, _ in }
            return ("accepted", [])
        } catch {
            XCTAssertEqual(bytes(cow, 0, 4096), before, "a refused store is left untouched")
            return ("\(error)", before)
        }
    }

    func testCorruptHeadersAreRefusedAndLeftUntouched() {
        XCTAssertEqual(refusal { $0.fill(0x41, at: 0, count: 4) }.0, "COW device cow: bad magic 0x41414141, not a snapshot store")
        XCTAssertEqual(refusal { cow in
            _ = try? PersistentStore(cow: cow, chunkSize: 8).read { _, _ in }
            cow.fill(2, at: 8, count: 1)
        }.0, "COW device cow: unsupported store version 2")
        XCTAssertEqual(refusal { cow in
            _ = try? PersistentStore(cow: cow, chunkSize: 8).read { _, _ in }
            cow.fill(3, at: 12, count: 1)
        }.0, "COW device cow: bad chunk size 3 in the header")
        XCTAssertEqual(refusal({ cow in
            _ = try? PersistentStore(cow: cow, chunkSize: 8).read { _, _ in }
        }, sectors: 1000).0, "accepted")
        XCTAssertEqual(refusal({ _ in }, sectors: 20).0,
                       "COW device cow is too small: 20 sectors, a store with chunk size 8 needs at least 24")
    }

    func testRecordPointingOutsideTheDeviceIsRefused() {
        XCTAssertTrue(refusal { cow in
            _ = try? PersistentStore(cow: cow, chunkSize: 8).read { _, _ in }
            cow.fill(0xFF, at: 8 * 512 + 8, count: 8)
        }.0.contains("metadata area 0 record 0 points at chunk"))
    }

    /// Found by the cow fuzzer: a corrupt store may hold 2^64-1 as an old chunk; reading and
    /// listing the records for a merge must not trap on it (the merge itself then fails).
    func testLastExceptionsSurvivesAnOldChunkOfTwoToThe64MinusOne() throws {
        let cow = MemoryDevice(name: "cow", sectors: 16 * 10)
        let store = PersistentStore(cow: cow, chunkSize: 16)
        XCTAssertTrue(try store.read { _, _ in })
        for old in [UInt64.max, 0] {
            let new = try XCTUnwrap(store.prepare())
            XCTAssertTrue(commitAndWait(store, old: old, new: new))
        }
        let reloaded = PersistentStore(cow: cow, chunkSize: 16)
        var found: [UInt64] = []
        XCTAssertTrue(try reloaded.read { old, _ in found.append(old) })
        XCTAssertEqual(found, [UInt64.max, 0])
        XCTAssertEqual(reloaded.lastExceptions(limit: 8).map(\.old), [0, UInt64.max], "newest first")
    }

    func testTransientStoreAllocatesFromZero() throws {
        let cow = MemoryDevice(name: "cow", sectors: 64)
        let store = TransientStore(cow: cow, chunkSize: 16)
        XCTAssertEqual([store.prepare(), store.prepare(), store.prepare(), store.prepare(), store.prepare()], [0, 1, 2, 3, nil])
        XCTAssertEqual(store.usage.metadata, 0)
        XCTAssertEqual(bytes(cow, 0, 16), Array(repeating: 0, count: 16), "nothing written")
    }
}

/// Holds a commit's result, set from any thread.
final class ResultBox: @unchecked Sendable {
    private let lock = ConditionLock()
    private var result: Bool?
    func set(_ value: Bool) { lock.withLock { result = value } }
    var value: Bool? { lock.withLock { result } }
}
