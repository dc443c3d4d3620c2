import Glibc
import UDMCore
import UDMTargets
import UDMTestSupport
import XCTest

final class FlakeyTargetTests: XCTestCase {
    let disk = MemoryDevice(name: "/m", sectors: 256)

    override func setUp() {
        disk.fill(0xAA, at: 0, count: 256 * 512)
    }

    private func flakey(_ arguments: String, length: Int = 64) throws -> MappedDevice {
        try makeDevice("0 \(length) flakey /m \(arguments)", devices: [disk])
    }

    private func rejected(_ arguments: String) -> String {
        rejection("0 64 flakey /m \(arguments)", devices: [disk])
    }

    func testRejectsEachBadArgumentNamingIt() {
        XCTAssertEqual(rejected("0 1"), "line 1: flakey: invalid argument count: expected <dev> <offset> <up interval> <down interval> [<#feature args> <feature args>...], got 3 arguments")
        XCTAssertEqual(rejected("x 1 1"), "line 1: argument 2 of flakey: invalid device sector 'x'")
        XCTAssertEqual(rejected("0 -1 1"), "line 1: argument 3 of flakey: invalid up interval '-1': seconds, 0-4294967295")
        XCTAssertEqual(rejected("0 1 1s"), "line 1: argument 4 of flakey: invalid down interval '1s': seconds, 0-4294967295")
        XCTAssertEqual(rejected("0 0 0"), "line 1: argument 4 of flakey: total (up + down) interval is zero")
        XCTAssertEqual(rejected("0 4294967295 1"), "line 1: argument 4 of flakey: interval overflow: up + down exceeds 4294967295 seconds")
        XCTAssertEqual(rejected("0 1 1 12"), "line 1: argument 5 of flakey: invalid number of feature args '12': 0-11")
        XCTAssertEqual(rejected("0 1 1 2 drop_writes"), "line 1: argument 5 of flakey: 2 feature args announced but only 1 follow")
        XCTAssertEqual(rejected("0 1 1 1 drop_writes error_reads"), "line 1: argument 5 of flakey: 1 feature args announced but 2 follow")
        XCTAssertEqual(rejected("0 1 1 1 drop_everything"), "line 1: argument 6 of flakey: unrecognised flakey feature 'drop_everything'")
        XCTAssertEqual(rejected("0 1 1 2 drop_writes DROP_WRITES"), "line 1: argument 7 of flakey: feature drop_writes duplicated")
        XCTAssertEqual(rejected("0 1 1 2 drop_writes error_writes"), "line 1: argument 7 of flakey: feature error_writes conflicts with feature drop_writes")
        XCTAssertEqual(rejected("0 1 1 2 error_writes drop_writes"), "line 1: argument 7 of flakey: feature drop_writes conflicts with feature error_writes")
        XCTAssertEqual(rejected("0 1 1 3 corrupt_bio_byte 1 r"), "line 1: argument 6 of flakey: feature corrupt_bio_byte requires 4 parameters: <Nth byte> <r|w> <value> <flags>")
        XCTAssertEqual(rejected("0 1 1 5 corrupt_bio_byte 0 r 1 0"), "line 1: argument 7 of flakey: invalid corrupt bio byte '0': 1-4294967295")
        XCTAssertEqual(rejected("0 1 1 5 corrupt_bio_byte 1 x 1 0"), "line 1: argument 8 of flakey: invalid corrupt bio direction 'x' (r or w)")
        XCTAssertEqual(rejected("0 1 1 5 corrupt_bio_byte 1 r 256 0"), "line 1: argument 9 of flakey: invalid corrupt value to write into bio byte '256': 0-255")
        XCTAssertEqual(rejected("0 1 1 5 corrupt_bio_byte 1 r 1 -1"), "line 1: argument 10 of flakey: invalid corrupt bio flags mask '-1': 0-4294967295")
        XCTAssertEqual(rejected("0 1 1 1 random_read_corrupt"), "line 1: argument 6 of flakey: missing random read corrupt probability")
        XCTAssertEqual(rejected("0 1 1 2 random_write_corrupt 1000000001"), "line 1: argument 7 of flakey: invalid random write corrupt probability '1000000001': 0-1000000000")
        XCTAssertEqual(rejected("0 1 1 6 drop_writes corrupt_bio_byte 1 w 1 0"), "line 1: flakey: drop_writes is incompatible with random_write_corrupt or corrupt_bio_byte with the w direction")
        XCTAssertEqual(rejected("0 1 1 3 error_writes random_write_corrupt 5"), "line 1: flakey: error_writes is incompatible with random_write_corrupt or corrupt_bio_byte with the w direction")
        XCTAssertEqual(rejected("0 1 1 6 error_reads corrupt_bio_byte 1 r 1 0"), "line 1: flakey: error_reads is incompatible with random_read_corrupt or corrupt_bio_byte with the r direction")
        XCTAssertTrue(rejected("250 1 1").hasPrefix("line 1: argument 1 of flakey: device /m is too small"))
        XCTAssertEqual(rejected("0 1 1 6 error_reads corrupt_bio_byte 1 w 1 0"), "accepted")
    }

    func testTableLinePrintsWhatWasParsedInDmsOrder() throws {
        let cases = [
            ("8 3 5", "/m 8 3 5 0"),
            ("8 3 5 0", "/m 8 3 5 0"),
            ("0 0 9 1 DROP_WRITES", "/m 0 0 9 1 drop_writes"),
            ("0 1 2 2 error_writes error_reads", "/m 0 1 2 2 error_reads error_writes"),
            ("0 1 2 10 random_write_corrupt 7 corrupt_bio_byte 32 W 1 0 error_reads random_read_corrupt 0",
             "/m 0 1 2 8 error_reads corrupt_bio_byte 32 w 1 0 random_write_corrupt 7"),
        ]
        for (arguments, table) in cases {
            let device = try flakey(arguments)
            XCTAssertEqual(device.live?.lines(.table), ["0 64 flakey \(table)"], arguments)
            XCTAssertEqual(device.live?.lines(.info), ["0 64 flakey "], arguments)
            // The printed line builds the same target.
            XCTAssertEqual(try makeDevice("0 64 flakey \(table)", devices: [disk]).live?.lines(.table), ["0 64 flakey \(table)"])
        }
    }

    func testDropWritesAcknowledgesWritesAndChangesNothing() throws {
        let device = try flakey("16 0 60 1 drop_writes")
        let data = TestBuffer(sectors: 8, seed: 3)
        disk.clearLog()
        XCTAssertEqual(runBio(.write, on: device, sector: 4, buffer: data), .ok)
        XCTAssertEqual(runBio(.write, on: device, sector: 4, buffer: data, flags: [.preflush, .fua]), .ok)
        XCTAssertEqual(runBio(.flush, on: device), .ok)
        XCTAssertEqual(runBio(.discard, on: device, sector: 0, sectors: 64), .ok)
        XCTAssertEqual(disk.bytes(at: 0, count: 256 * 512), [UInt8](repeating: 0xAA, count: 256 * 512))
        XCTAssertEqual(disk.seen, [], "a dropped write, flush or discard reached the device")
        // Reads still pass, from the offset.
        disk.fill(0x55, at: (16 + 4) * 512, count: 512)
        let read = TestBuffer(sectors: 2)
        XCTAssertEqual(runBio(.read, on: device, sector: 4, buffer: read), .ok)
        XCTAssertEqual(read.bytes, [UInt8](repeating: 0x55, count: 512) + [UInt8](repeating: 0xAA, count: 512))
        XCTAssertEqual(runBio(.writeZeroes, on: device, sector: 0, sectors: 8), .notSupported, "dm-flakey takes no write-zeroes")
    }

    func testWithoutFeaturesEverythingFailsWhileDown() throws {
        let device = try flakey("0 0 60")
        let data = TestBuffer(sectors: 4, seed: 9)
        XCTAssertEqual(runBio(.read, on: device, buffer: TestBuffer(sectors: 4)), .ioError)
        XCTAssertEqual(runBio(.write, on: device, buffer: data), .ioError)
        XCTAssertEqual(runBio(.flush, on: device), .ioError)
        XCTAssertEqual(runBio(.discard, on: device, sectors: 8), .ioError)
        XCTAssertEqual(disk.bytes(at: 0, count: 4096), [UInt8](repeating: 0xAA, count: 4096))
    }

    func testErrorReadsFailsReadsAndLetsWritesLand() throws {
        let device = try flakey("8 0 60 1 error_reads")
        let data = TestBuffer(sectors: 4, seed: 1)
        XCTAssertEqual(runBio(.write, on: device, sector: 2, buffer: data), .ok)
        XCTAssertEqual(disk.bytes(at: 10 * 512, count: 4 * 512), data.bytes)
        XCTAssertEqual(runBio(.read, on: device, sector: 2, buffer: TestBuffer(sectors: 4)), .ioError)
        XCTAssertEqual(runBio(.flush, on: device), .ok)
    }

    func testErrorWritesFailsWritesAndLetsReadsThrough() throws {
        let device = try flakey("0 0 60 1 error_writes")
        XCTAssertEqual(runBio(.write, on: device, buffer: TestBuffer(sectors: 1, seed: 1)), .ioError)
        XCTAssertEqual(runBio(.flush, on: device), .ioError)
        let read = TestBuffer(sectors: 1)
        XCTAssertEqual(runBio(.read, on: device, buffer: read), .ok)
        XCTAssertEqual(read.bytes, [UInt8](repeating: 0xAA, count: 512))
    }

    func testWhileUpEveryFeatureIsInactive() throws {
        let device = try flakey("0 60 0 1 drop_writes")
        let data = TestBuffer(sectors: 4, seed: 7)
        XCTAssertEqual(runBio(.write, on: device, buffer: data), .ok)
        XCTAssertEqual(disk.bytes(at: 0, count: 2048), data.bytes)
        let failing = try flakey("0 60 0")
        XCTAssertEqual(runBio(.read, on: failing, buffer: TestBuffer(sectors: 4)), .ok)
    }

    func testCorruptBioByteOnReadsChangesWhatIsReturnedNotTheDisk() throws {
        let device = try flakey("0 0 60 5 corrupt_bio_byte 700 r 7 0")
        let read = TestBuffer(sectors: 4)
        XCTAssertEqual(runBio(.read, on: device, sector: 1, buffer: read), .ok)
        var expected = [UInt8](repeating: 0xAA, count: 2048)
        expected[699] = 7
        XCTAssertEqual(read.bytes, expected)
        XCTAssertEqual(disk.bytes(at: 0, count: 4096), [UInt8](repeating: 0xAA, count: 4096))
        // A bio shorter than N bytes is left alone.
        let short = TestBuffer(sectors: 1)
        XCTAssertEqual(runBio(.read, on: device, buffer: short), .ok)
        XCTAssertEqual(short.bytes, [UInt8](repeating: 0xAA, count: 512))
    }

    func testCorruptBioByteOnWritesChangesTheDiskNotTheCallersData() throws {
        let device = try flakey("0 0 60 5 corrupt_bio_byte 1 w 0 0")
        let data = TestBuffer(sectors: 2, seed: 5)
        let original = data.bytes
        XCTAssertEqual(runBio(.write, on: device, sector: 3, buffer: data), .ok)
        XCTAssertEqual(data.bytes, original, "the caller's buffer was left corrupted")
        var expected = original
        expected[0] = 0
        XCTAssertEqual(disk.bytes(at: 3 * 512, count: 1024), expected)
    }

    func testCorruptFlagsSelectWhichWritesAreCorrupted() throws {
        let fua = 1 << 17
        let device = try flakey("0 0 60 5 corrupt_bio_byte 2 w 0 \(fua)")
        let data = TestBuffer(sectors: 1, seed: 5)
        XCTAssertEqual(runBio(.write, on: device, buffer: data), .ok)
        XCTAssertEqual(disk.bytes(at: 0, count: 512), data.bytes, "a write without FUA was corrupted")
        XCTAssertEqual(runBio(.write, on: device, sector: 1, buffer: data, flags: .fua), .ok)
        var expected = data.bytes
        expected[1] = 0
        XCTAssertEqual(disk.bytes(at: 512, count: 512), expected)
    }

    func testRandomCorruptionChangesAtMostOneByte() throws {
        let device = try flakey("0 0 60 4 random_read_corrupt 1000000000 random_write_corrupt 1000000000")
        var changedWrites = 0
        var changedReads = 0
        for round in 0..<20 {
            let data = TestBuffer(sectors: 2, seed: UInt8(round))
            let original = data.bytes
            XCTAssertEqual(runBio(.write, on: device, sector: 8, buffer: data), .ok)
            XCTAssertEqual(data.bytes, original)
            let differences = zip(disk.bytes(at: 8 * 512, count: 1024), original).filter { $0 != $1 }.count
            XCTAssertLessThanOrEqual(differences, 1)
            changedWrites += differences
            disk.fill(0xAA, at: 8 * 512, count: 1024)
            let read = TestBuffer(sectors: 2)
            XCTAssertEqual(runBio(.read, on: device, sector: 8, buffer: read), .ok)
            let readDifferences = read.bytes.filter { $0 != 0xAA }.count
            XCTAssertLessThanOrEqual(readDifferences, 1)
            changedReads += readDifferences
        }
        // A random value equals the old one 1 time in 256: 20 rounds all missing is ~1e-48.
        XCTAssertGreaterThan(changedWrites, 0)
        XCTAssertGreaterThan(changedReads, 0)
    }

    /// Up 1 s, down 1 s, no features: every read succeeds exactly when the target says it is up.
    /// Asserts on the state the target reports around each I/O, never on how long anything took.
    func testUpAndDownIntervalsSwitchBehaviour() throws {
        let device = try flakey("0 1 1")
        let target = try XCTUnwrap(device.live?.entries[0].target as? FlakeyTarget)
        var sawUp = false
        var sawDown = false
        let read = TestBuffer(sectors: 1)
        let start = monotonicNanoseconds()
        while !(sawUp && sawDown) || monotonicNanoseconds() - start < 3_000_000_000 {
            guard monotonicNanoseconds() - start < 20_000_000_000 else {
                return XCTFail("in 20 s saw up: \(sawUp), down: \(sawDown)")
            }
            let before = target.isDown
            let status = runBio(.read, on: device, buffer: read)
            guard target.isDown == before else { continue }  // switched during the I/O
            XCTAssertEqual(status, before ? .ioError : .ok)
            if before { sawDown = true } else { sawUp = true }
            usleep(20_000)
        }
    }
}
