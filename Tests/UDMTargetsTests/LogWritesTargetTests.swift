import Glibc
import UDMCore
import UDMTargets
import UDMTestSupport
import XCTest

/// One entry of a log-writes log, as read back from the log device.
struct LoggedEntry: Equatable, CustomStringConvertible {
    var sector: UInt64
    var sectors: UInt64
    var flags: UInt64
    var label: String = ""
    /// The first byte of each data sector (test data is one value per sector).
    var data: [UInt8] = []

    var description: String {
        let names = ["FLUSH", "FUA", "DISCARD", "MARK", "META"].enumerated().filter { flags & (1 << $0.offset) != 0 }.map(\.element)
        return "\(names.joined(separator: "|"))@\(sector)+\(sectors)\(label.isEmpty ? "" : " '\(label)'")\(data.isEmpty ? "" : " \(data)")"
    }
}

let flushFlag: UInt64 = 1, fuaFlag: UInt64 = 2, discardFlag: UInt64 = 4, markFlag: UInt64 = 8

/// Reads a log-writes log: the super block's entry count and every entry it counts.
func readLog(_ device: MemoryDevice) -> (count: UInt64, entries: [LoggedEntry]) {
    func u64(_ offset: Int) -> UInt64 {
        device.bytes(at: offset, count: 8).reversed().reduce(0) { $0 << 8 | UInt64($1) }
    }
    guard u64(0) == 0x6a736677736872 else { return (0, []) }
    let count = u64(16)
    var entries: [LoggedEntry] = []
    var sector = 1
    for _ in 0..<count {
        let base = sector << 9
        var entry = LoggedEntry(sector: u64(base), sectors: u64(base + 8), flags: u64(base + 16))
        let labelLength = Int(u64(base + 24))
        entry.label = String(decoding: device.bytes(at: base + 32, count: labelLength), as: UTF8.self)
        sector += 1
        if entry.flags & (discardFlag | markFlag | flushFlag) == 0 {
            entry.data = (0..<Int(entry.sectors)).map { device.byte(at: (sector + $0) << 9) }
            sector += Int(entry.sectors)
        }
        entries.append(entry)
    }
    return (count, entries)
}

/// A data device that holds flushes until `releaseFlushes`, so a test can finish writes while
/// a flush is in flight.
final class FlushHoldingDevice: BlockDevice, @unchecked Sendable {
    let inner: MemoryDevice
    private let lock = ConditionLock()
    private var held: [Bio] = []

    init(_ inner: MemoryDevice) { self.inner = inner }

    var name: String { inner.name }
    var sectors: UInt64 { inner.sectors }
    var discardZeroes: Bool { true }
    var heldCount: Int { lock.withLock { held.count } }

    func submitBio(_ bio: Bio) {
        guard bio.op == .flush else { return inner.submitBio(bio) }
        lock.withLock { held.append(bio) }
    }

    func releaseFlushes() {
        let bios = lock.withLock { () -> [Bio] in
            defer { held.removeAll() }
            return held
        }
        for bio in bios { bio.end(.ok) }
    }
}

/// A bio submitted without waiting for its end.
final class StartedBio: BioCompletion, @unchecked Sendable {
    let bio: Bio
    private let done = ConditionLock()
    private var ended = false

    init(_ bio: Bio, on device: BlockDevice) {
        self.bio = bio
        bio.completion = self
        bio.submit(to: device)
    }

    func bioCompleted(_ bio: Bio) {
        bio.completion = nil
        bio.device = nil
        done.withLock { ended = true; done.broadcast() }
    }
    var hasEnded: Bool { done.withLock { ended } }
}

final class LogWritesTargetTests: XCTestCase {
    let data = MemoryDevice(name: "/d", sectors: 256)
    let log = MemoryDevice(name: "/l", sectors: 512)

    private func logWrites(length: Int = 64, data: BlockDevice? = nil) throws -> MappedDevice {
        let table = try Table(lines: TableLine.parse("0 \(length) log-writes /d /l"), registry: BuiltinTargets.registry,
                              resolver: NamedResolver(devices: ["/d": data ?? self.data, "/l": log]),
                              bioSetSize: 16, services: TargetServices())
        let device = MappedDevice(name: "lw")
        device.load(table)
        try device.resume()
        return device
    }

    /// Writes `sectors` sectors at `sector`, sector i holding the byte `value + i`.
    @discardableResult
    private func write(_ device: MappedDevice, _ sector: UInt64, _ sectors: Int, _ value: UInt8, flags: BioFlags = []) -> BioStatus {
        let buffer = TestBuffer(sectors: sectors)
        for i in 0..<sectors { buffer.pointer.advanced(by: i << 9).initializeMemory(as: UInt8.self, repeating: value &+ UInt8(i), count: 512) }
        return runBio(.write, on: device, sector: sector, buffer: buffer, flags: flags)
    }

    /// Waits (bounded) until the status line reports `count` logged entries and the log's
    /// writer has had a moment to write them; returns the status.
    private func waitForEntries(_ device: MappedDevice, _ count: Int) -> String {
        var status = ""
        for _ in 0..<20_000 {
            status = device.live?.lines(.info).first ?? ""
            if status.split(separator: " ").dropFirst(3).first.flatMap({ Int($0) }) ?? 0 >= count { break }
            usleep(1000)
        }
        return status
    }

    /// Removes the device (which logs what is unflushed and the end mark) and reads the log.
    private func closeAndRead(_ device: inout MappedDevice?) -> [LoggedEntry] {
        device?.destroy()
        device = nil
        let (count, entries) = readLog(log)
        XCTAssertEqual(Int(count), entries.count)
        return entries
    }

    private var endMark: LoggedEntry { LoggedEntry(sector: 0, sectors: 0, flags: markFlag, label: "dm-log-writes-end") }

    func testRejectsBadArgumentsNamingThem() {
        XCTAssertEqual(rejection("0 64 log-writes /d", devices: [data, log]),
                       "line 1: log-writes: invalid argument count: expected <dev_path> <log_dev_path>, got 1 arguments")
        XCTAssertEqual(rejection("0 64 log-writes /d /l /l", devices: [data, log]),
                       "line 1: log-writes: invalid argument count: expected <dev_path> <log_dev_path>, got 3 arguments")
        XCTAssertTrue(rejection("0 64 log-writes /x /l", devices: [data, log]).hasPrefix("line 1: argument 1 of log-writes: cannot open device /x"))
        XCTAssertTrue(rejection("0 64 log-writes /d /x", devices: [data, log]).hasPrefix("line 1: argument 2 of log-writes: cannot open device /x"))
        XCTAssertTrue(rejection("0 300 log-writes /d /l", devices: [data, log]).hasPrefix("line 1: argument 1 of log-writes: device /d is too small"))
    }

    func testTableAndStatusLinesAsDms() throws {
        var device: MappedDevice? = try logWrites()
        XCTAssertEqual(device?.live?.lines(.table), ["0 64 log-writes /d /l"])
        XCTAssertEqual(device?.live?.lines(.info), ["0 64 log-writes 0 0"])
        write(device!, 3, 2, 10, flags: .fua)
        // One FUA entry: its header at sector 1, its data at 2-3, so sector 3 is the last used.
        XCTAssertEqual(waitForEntries(device!, 1), "0 64 log-writes 1 3")
        XCTAssertEqual(runBio(.discard, on: device!, sector: 8, sectors: 16), .ok)
        XCTAssertEqual(runBio(.flush, on: device!), .ok)
        // The discard (a header only) and the flush: sectors 4 and 5.
        XCTAssertEqual(waitForEntries(device!, 3), "0 64 log-writes 3 5")
        XCTAssertEqual(try makeDevice("0 64 log-writes /d /l", devices: [data, log]).live?.lines(.table), ["0 64 log-writes /d /l"])
        device?.destroy()
    }

    func testLogBytesAreDmsLayout() throws {
        var device: MappedDevice? = try logWrites()
        write(device!, 5, 2, 0x41, flags: .fua)
        _ = closeAndRead(&device)
        // Super block: magic, version 1, 2 entries (the write and the end mark), sectorsize 512.
        XCTAssertEqual(log.bytes(at: 0, count: 32), [0x72, 0x68, 0x73, 0x77, 0x66, 0x73, 0x6a, 0, 1, 0, 0, 0, 0, 0, 0, 0,
                                                     2, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0])
        XCTAssertEqual(log.bytes(at: 32, count: 480), [UInt8](repeating: 0, count: 480))
        // Entry 1 at sector 1: sector 5, 2 sectors, FUA, data_len 0, zeros; its data at 2-3.
        XCTAssertEqual(log.bytes(at: 512, count: 32), [5, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0,
                                                       2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
        XCTAssertEqual(log.bytes(at: 544, count: 480), [UInt8](repeating: 0, count: 480))
        XCTAssertEqual(log.bytes(at: 1024, count: 1024), [UInt8](repeating: 0x41, count: 512) + [UInt8](repeating: 0x42, count: 512))
        // Entry 2 at sector 4: the end mark, its label in the header sector, data_len 17.
        XCTAssertEqual(log.bytes(at: 2048 + 16, count: 16), [8, 0, 0, 0, 0, 0, 0, 0, 17, 0, 0, 0, 0, 0, 0, 0])
        XCTAssertEqual(log.bytes(at: 2048 + 32, count: 18), Array("dm-log-writes-end".utf8) + [0])
        // The data reached the data device unchanged, at the same sector.
        XCTAssertEqual(data.bytes(at: 5 * 512, count: 2), [0x41, 0x41])
    }

    func testWritesWaitForAFlushAndFuaWritesDoNot() throws {
        var device: MappedDevice? = try logWrites()
        write(device!, 1, 1, 1)
        write(device!, 2, 2, 2)
        XCTAssertEqual(runBio(.discard, on: device!, sector: 10, sectors: 4), .ok)
        write(device!, 20, 1, 9, flags: .fua)
        XCTAssertEqual(waitForEntries(device!, 1), "0 64 log-writes 1 2", "only the FUA write is logged before a flush")
        XCTAssertEqual(runBio(.flush, on: device!), .ok)
        write(device!, 30, 1, 7)
        let entries = closeAndRead(&device)
        XCTAssertEqual(entries, [
            LoggedEntry(sector: 20, sectors: 1, flags: fuaFlag, data: [9]),
            LoggedEntry(sector: 1, sectors: 1, flags: 0, data: [1]),
            LoggedEntry(sector: 2, sectors: 2, flags: 0, data: [2, 3]),
            LoggedEntry(sector: 10, sectors: 4, flags: discardFlag),
            LoggedEntry(sector: 0, sectors: 0, flags: flushFlag),
            // Unflushed at teardown: logged before the end mark, as dm's destructor does.
            LoggedEntry(sector: 30, sectors: 1, flags: 0, data: [7]),
            endMark,
        ])
    }

    func testAFlushTakesOnlyWritesCompletedBeforeItWasMapped() throws {
        let holding = FlushHoldingDevice(data)
        var device: MappedDevice? = try logWrites(data: holding)
        write(device!, 1, 1, 1)
        var flush: StartedBio? = StartedBio(Bio(op: .flush), on: device!)
        for _ in 0..<20_000 where holding.heldCount == 0 { usleep(1000) }
        XCTAssertEqual(holding.heldCount, 1)
        // Completes while the flush is in flight: it belongs to the next flush, not this one.
        write(device!, 2, 1, 2)
        holding.releaseFlushes()
        for _ in 0..<20_000 where flush?.hasEnded == false { usleep(1000) }
        XCTAssertEqual(flush?.hasEnded, true)
        flush = nil
        XCTAssertEqual(closeAndRead(&device), [
            LoggedEntry(sector: 1, sectors: 1, flags: 0, data: [1]),
            LoggedEntry(sector: 0, sectors: 0, flags: flushFlag),
            LoggedEntry(sector: 2, sectors: 1, flags: 0, data: [2]),
            endMark,
        ])
    }

    func testPreflushFuaWriteIsAFlushThenAFuaWrite() throws {
        var device: MappedDevice? = try logWrites()
        write(device!, 4, 1, 4)
        // An ext4 journal commit: the core sends the PREFLUSH first, then the data with FUA.
        write(device!, 8, 1, 8, flags: [.preflush, .fua])
        XCTAssertEqual(closeAndRead(&device), [
            LoggedEntry(sector: 4, sectors: 1, flags: 0, data: [4]),
            LoggedEntry(sector: 0, sectors: 0, flags: flushFlag),
            LoggedEntry(sector: 8, sectors: 1, flags: fuaFlag, data: [8]),
            endMark,
        ])
    }

    func testMarkIsLoggedAtOnceAndRewritesTheSuperBlock() throws {
        var device: MappedDevice? = try logWrites()
        func message(_ words: [String]) throws -> String { try device!.live!.entries[0].target.message(words) }
        write(device!, 1, 1, 1)
        XCTAssertEqual(try message(["MARK", "one"]), "")
        XCTAssertEqual(waitForEntries(device!, 1), "0 64 log-writes 1 1")
        // The super block was rewritten after the mark: it counts it.
        for _ in 0..<20_000 where readLog(log).count != 1 { usleep(1000) }
        XCTAssertEqual(readLog(log).entries, [LoggedEntry(sector: 0, sectors: 0, flags: markFlag, label: "one")])
        let long = String(repeating: "x", count: 600)
        XCTAssertEqual(try message(["mark", long]), "")
        XCTAssertThrowsError(try message(["mark"])) {
            XCTAssertEqual("\($0)", "invalid log-writes message arguments, expect 2 arguments (mark <label>), got 1")
        }
        XCTAssertThrowsError(try message(["mark", "a", "b"]))
        XCTAssertThrowsError(try message(["label", "a"])) {
            XCTAssertEqual("\($0)", "unrecognised log-writes message 'label' (expected mark <label>)")
        }
        XCTAssertEqual(closeAndRead(&device), [
            LoggedEntry(sector: 0, sectors: 0, flags: markFlag, label: "one"),
            // Cut to what fits in the header sector with dm's terminator: 512 - 32 - 1.
            LoggedEntry(sector: 0, sectors: 0, flags: markFlag, label: String(repeating: "x", count: 479)),
            LoggedEntry(sector: 1, sectors: 1, flags: 0, data: [1]),
            endMark,
        ])
    }

    func testAReloadTearsTheOldTableDown() throws {
        let device = try logWrites()
        write(device, 6, 1, 6)
        let linear = try Table(lines: TableLine.parse("0 64 linear /d 0"), registry: BuiltinTargets.registry,
                               resolver: NamedResolver(devices: ["/d": data]), bioSetSize: 16, services: TargetServices())
        device.load(linear)
        device.suspend()
        try device.resume()
        // The old table's destructor logged the unflushed write and the end mark.
        XCTAssertEqual(readLog(log).entries, [LoggedEntry(sector: 6, sectors: 1, flags: 0, data: [6]), endMark])
        write(device, 7, 1, 7)
        device.destroy()
        XCTAssertEqual(readLog(log).count, 2, "nothing is logged once the table is gone")
    }

    func testReusedEntriesLogWhatEachWriteCarried() throws {
        let log = MemoryDevice(name: "/l", sectors: 4096)
        let table = try Table(lines: TableLine.parse("0 64 log-writes /d /l"), registry: BuiltinTargets.registry,
                              resolver: NamedResolver(devices: ["/d": data, "/l": log]), bioSetSize: 16, services: TargetServices())
        let device = MappedDevice(name: "lw")
        device.load(table)
        try device.resume()
        var expected: [LoggedEntry] = []
        // Sizes up and down, so reused entries grow, shrink and grow again.
        for round in 0..<60 {
            let sectors = [1, 4, 2, 8, 1][round % 5]
            let value = UInt8(truncatingIfNeeded: round * 16)
            write(device, UInt64(round % 50), sectors, value, flags: round % 3 == 0 ? .fua : [])
            expected.append(LoggedEntry(sector: UInt64(round % 50), sectors: UInt64(sectors), flags: round % 3 == 0 ? fuaFlag : 0,
                                        data: (0..<sectors).map { value &+ UInt8($0) }))
            if round % 3 == 2 {
                XCTAssertEqual(runBio(.flush, on: device), .ok)
                expected.append(LoggedEntry(sector: 0, sectors: 0, flags: flushFlag))
            }
        }
        device.destroy()
        XCTAssertEqual(readLog(log).entries, expected + [endMark])
    }

    func testReadsAreNotLogged() throws {
        var device: MappedDevice? = try logWrites()
        data.fill(0x33, at: 512, count: 512)
        let buffer = TestBuffer(sectors: 1)
        XCTAssertEqual(runBio(.read, on: device!, sector: 1, buffer: buffer), .ok)
        XCTAssertEqual(buffer.bytes, [UInt8](repeating: 0x33, count: 512))
        XCTAssertEqual(runBio(.flush, on: device!), .ok)
        XCTAssertEqual(closeAndRead(&device), [LoggedEntry(sector: 0, sectors: 0, flags: flushFlag), endMark])
    }

    func testAFullLogStopsLoggingButNotTheWrites() throws {
        let small = MemoryDevice(name: "/s", sectors: 8)
        var device: MappedDevice? = try makeDevice("0 64 log-writes /d /s", devices: [data, small])
        write(device!, 1, 4, 1, flags: .fua)
        // Header 1 + data 2-5: next would start at 6, inside the 8 sectors.
        XCTAssertEqual(waitForEntries(device!, 1), "0 64 log-writes 1 5")
        write(device!, 10, 2, 5, flags: .fua)
        // 6 + 3 = 9 is past the end: the entry is dropped and logging stops for good.
        var status = ""
        for _ in 0..<20_000 {
            status = device!.live!.lines(.info)[0]
            if status.hasSuffix("logging_disabled") { break }
            usleep(1000)
        }
        XCTAssertEqual(status, "0 64 log-writes 1 8 logging_disabled")
        write(device!, 20, 1, 7)
        XCTAssertEqual(data.bytes(at: 20 * 512, count: 1), [7], "writes still reach the data device")
        XCTAssertEqual(data.bytes(at: 10 * 512, count: 1), [5])
        device?.destroy()
        let (count, entries) = readLog(small)
        XCTAssertEqual(count, 1)
        XCTAssertEqual(entries, [LoggedEntry(sector: 1, sectors: 4, flags: fuaFlag, data: [1, 2, 3, 4])])
    }

    func testAFailedLogWriteStopsLogging() throws {
        log.fail(1...1)
        var device: MappedDevice? = try logWrites()
        write(device!, 1, 1, 1, flags: .fua)
        var status = ""
        for _ in 0..<20_000 {
            status = device!.live!.lines(.info)[0]
            if status.hasSuffix("logging_disabled") { break }
            usleep(1000)
        }
        XCTAssertEqual(status, "0 64 log-writes 1 2 logging_disabled")
        XCTAssertEqual(data.bytes(at: 512, count: 1), [1])
        device?.destroy()
    }
}
