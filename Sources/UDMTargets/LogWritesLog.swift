import UDMCore

/// dm-log-writes' log: its on-disk format, the entries waiting to be logged, and the thread
/// that appends them to the log device (dm-log-writes.c's super and entry structs, its
/// `unflushed_blocks` / `logging_blocks` lists and its log kthread).
///
/// Layout (all integers little-endian; a "block" is the data device's logical block size, 512
/// bytes here, as `sectorsize` records):
/// - block 0, the super block: magic u64 0x6a736677736872 @0, version u64 1 @8, number of
///   entries u64 @16, sectorsize u32 @24, zeros to the end of the block. It is rewritten after
///   each FUA or MARK entry has been logged, never before the first one: until then block 0
///   holds whatever the log device held.
/// - from block 1, the entries, back to back. Each is a header block (sector u64 @0,
///   nr_sectors u64 @8, flags u64 @16, data_len u64 @24, both counts in blocks), then:
///   for a write, the `nr_sectors` blocks it wrote; for a MARK, nothing more, its label
///   (data_len bytes, no terminator) sits in the header block at byte 32; for a FLUSH or a
///   DISCARD, nothing (a discard's nr_sectors is the range discarded). The rest of a header
///   block is zeros; data_len is 0 except for marks.
/// - flags: FLUSH 1, FUA 2, DISCARD 4, MARK 8, METADATA 16 (REQ_META, which no bio here
///   carries, so udm never sets it).
///
/// Order: a write, discard or flush is an entry once it has completed. A plain write or
/// discard waits on the unflushed list; a flush, when mapped, takes the unflushed list so
/// far, and when it completes, that list and then the flush go to the log; a FUA write goes
/// to the log as soon as it completes; a mark goes at once. The log holds what reached the
/// disk in an order a crash could leave behind.
enum LogWritesFormat {
    static let magic: UInt64 = 0x6a736677736872
    static let version: UInt64 = 1
    static let headerBytes = 32
    /// The mark the kernel logs when a table is torn down.
    static let endMark = "dm-log-writes-end"

    struct Flags: OptionSet, Sendable {
        let rawValue: UInt64
        static let flush = Flags(rawValue: 1 << 0)
        static let fua = Flags(rawValue: 1 << 1)
        static let discard = Flags(rawValue: 1 << 2)
        static let mark = Flags(rawValue: 1 << 3)
        static let metadata = Flags(rawValue: 1 << 4)
    }

    /// Fills one block at `block` with the super block.
    static func storeSuper(entries: UInt64, blockSize: Int, into block: UnsafeMutableRawPointer) {
        block.initializeMemory(as: UInt8.self, repeating: 0, count: blockSize)
        block.storeBytes(of: magic.littleEndian, toByteOffset: 0, as: UInt64.self)
        block.storeBytes(of: version.littleEndian, toByteOffset: 8, as: UInt64.self)
        block.storeBytes(of: entries.littleEndian, toByteOffset: 16, as: UInt64.self)
        block.storeBytes(of: UInt32(blockSize).littleEndian, toByteOffset: 24, as: UInt32.self)
    }

    /// Fills the header block at `block`: the header, then `label` (marks), then zeros.
    static func storeHeader(sector: UInt64, sectors: UInt64, flags: Flags, label: [UInt8],
                            blockSize: Int, into block: UnsafeMutableRawPointer) {
        block.initializeMemory(as: UInt8.self, repeating: 0, count: blockSize)
        block.storeBytes(of: sector.littleEndian, toByteOffset: 0, as: UInt64.self)
        block.storeBytes(of: sectors.littleEndian, toByteOffset: 8, as: UInt64.self)
        block.storeBytes(of: flags.rawValue.littleEndian, toByteOffset: 16, as: UInt64.self)
        block.storeBytes(of: UInt64(label.count).littleEndian, toByteOffset: 24, as: UInt64.self)
        label.withUnsafeBytes { (block + headerBytes).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
    }
}

/// One entry waiting to be logged (dm: `pending_block`): its header block and data, laid out
/// as they go to the log, so an entry is one write. Written entries are reused (`LogWritesLog`
/// keeps a few), so steady logging does not allocate.
final class LogEntry {
    private(set) var flags: LogWritesFormat.Flags = []
    /// Header block, then the data (writes only); `capacity` bytes, `byteCount` in use.
    private(set) var bytes: UnsafeMutableRawPointer?
    private(set) var capacity = 0
    private(set) var byteCount = 0
    /// Blocks written to the data device (0 for a flush or mark; a discard's range).
    private(set) var sectors: UInt64 = 0
    /// Link on whichever list holds the entry.
    var next: LogEntry?
    /// A flush's share of the unflushed list, taken when it was mapped.
    var flushed = LogEntryList()

    deinit { bytes?.deallocate() }

    /// Makes this the entry for a bio or mark. `data` is copied: a write's buffer is its
    /// submitter's again once the write ends, long before a flush logs it.
    func fill(sector: UInt64, sectors: UInt64, flags: LogWritesFormat.Flags, label: [UInt8] = [],
              data: UnsafeRawPointer?, blockSize: Int) {
        self.flags = flags
        self.sectors = sectors
        let dataBytes = data == nil ? 0 : Int(sectors) * blockSize
        byteCount = blockSize + dataBytes
        if capacity < byteCount {
            bytes?.deallocate()
            bytes = .allocate(byteCount: byteCount, alignment: 4096)
            capacity = byteCount
        }
        LogWritesFormat.storeHeader(sector: sector, sectors: sectors, flags: flags, label: label,
                                    blockSize: blockSize, into: bytes!)
        if let data { (bytes! + blockSize).copyMemory(from: data, byteCount: dataBytes) }
    }
}

/// A FIFO of entries linked through `next`.
struct LogEntryList {
    private(set) var head: LogEntry?
    private var tail: LogEntry?

    mutating func append(_ entry: LogEntry) {
        entry.next = nil
        if let tail { tail.next = entry } else { head = entry }
        tail = entry
    }

    mutating func append(_ list: LogEntryList) {
        guard let first = list.head else { return }
        if let tail { tail.next = first } else { head = first }
        tail = list.tail
    }

    mutating func removeFirst() -> LogEntry? {
        guard let first = head else { return nil }
        head = first.next
        if head == nil { tail = nil }
        first.next = nil
        return first
    }

    /// Takes the whole list, leaving this one empty.
    mutating func take() -> LogEntryList {
        let list = self
        self = LogEntryList()
        return list
    }
}

/// The log device side of one log-writes target: the two lists and the writer thread that
/// appends entries at the end of the log (dm: the log kthread). Logging stops for good, as in
/// dm, when a log write fails or the log device is full; I/O to the data device goes on.
final class LogWritesLog: @unchecked Sendable {
    let device: BlockDevice
    let blockSize: Int
    private let lock = ConditionLock()
    private var unflushed = LogEntryList()
    private var logging = LogEntryList()
    private var loggedEntries: UInt64 = 0
    /// Where the next entry goes, in 512-byte sectors.
    private var nextSector: UInt64
    private var enabled = true
    /// Held while entries are being written, so the writer and `close` never interleave.
    private let writing = ConditionLock()
    private let waiter = BioWaiter()
    private let bio = Bio()
    private let superBlock: UnsafeMutableRawPointer
    private var writer: WorkerThread!
    /// Written entries kept for reuse, up to `maxSpareBytes` of buffers.
    private var spare = LogEntryList()
    private var spareBytes = 0
    private static let maxSpareBytes = 8 << 20

    init(device: BlockDevice, blockSize: Int) {
        self.device = device
        self.blockSize = blockSize
        nextSector = UInt64(blockSize) >> sectorShift
        superBlock = .allocate(byteCount: blockSize, alignment: 4096)
        writer = WorkerThread { [weak self] in self?.writePending() }
    }

    deinit {
        writer.stop()
        superBlock.deallocate()
    }

    var isEnabled: Bool { lock.withLock { enabled } }

    /// dm status: logged entries, the last sector used, and whether logging has stopped.
    var status: String {
        lock.withLock { "\(loggedEntries) \(nextSector - 1)" + (enabled ? "" : " logging_disabled") }
    }

    /// An entry for a bio or mark (see `LogEntry.fill`), reused when one is spare.
    func makeEntry(sector: UInt64, sectors: UInt64, flags: LogWritesFormat.Flags, label: [UInt8] = [],
                   data: UnsafeRawPointer?) -> LogEntry {
        let entry = lock.withLock { () -> LogEntry? in
            let entry = spare.removeFirst()
            spareBytes -= entry?.capacity ?? 0
            return entry
        } ?? LogEntry()
        entry.fill(sector: sector, sectors: sectors, flags: flags, label: label, data: data, blockSize: blockSize)
        return entry
    }

    /// Keeps a written or dropped entry for reuse, or lets it go. Called with `lock` held.
    private func recycleLocked(_ entry: LogEntry) {
        guard spareBytes + entry.capacity <= Self.maxSpareBytes else { return }
        spare.append(entry)
        spareBytes += entry.capacity
    }

    /// For a flush being mapped: the writes and discards that have completed so far.
    func takeUnflushed() -> LogEntryList {
        lock.withLock { unflushed.take() }
    }

    /// A write, discard or flush has completed.
    func completed(_ entry: LogEntry) {
        lock.withLock {
            if entry.flags.contains(.flush) {
                logging.append(entry.flushed.take())
                logging.append(entry)
            } else if entry.flags.contains(.fua) {
                logging.append(entry)
            } else {
                unflushed.append(entry)
                return
            }
        }
        writer.kick()
    }

    func mark(_ label: [UInt8]) {
        let entry = makeEntry(sector: 0, sectors: 0, flags: .mark, label: label, data: nil)
        lock.withLock { logging.append(entry) }
        writer.kick()
    }

    /// The table is going away: log what is still unflushed and the end mark, wait until all
    /// of it is written (dm: log_writes_dtr), and log nothing more.
    func close() {
        let end = makeEntry(sector: 0, sectors: 0, flags: .mark, label: Array(LogWritesFormat.endMark.utf8), data: nil)
        lock.withLock {
            logging.append(unflushed.take())
            logging.append(end)
        }
        writePending()
        lock.withLock { enabled = false }
        writer.stop()
    }

    /// On the writer thread (or `close`): writes every entry on the logging list, in order.
    private func writePending() {
        writing.withLock {
            while let (entry, sector) = nextEntry() {
                var ok = write(entry.bytes!, sectors: UInt64(entry.byteCount) >> sectorShift, at: sector)
                if ok && !entry.flags.isDisjoint(with: [.fua, .mark]) {
                    let entries = lock.withLock { loggedEntries }
                    LogWritesFormat.storeSuper(entries: entries, blockSize: blockSize, into: superBlock)
                    ok = write(superBlock, sectors: UInt64(blockSize) >> sectorShift, at: 0)
                }
                lock.withLock {
                    if !ok { enabled = false }
                    recycleLocked(entry)
                }
            }
        }
    }

    /// The next entry to log and where it goes; entries that can no longer be logged are
    /// dropped on the way.
    private func nextEntry() -> (LogEntry, UInt64)? {
        lock.withLock {
            while let entry = logging.removeFirst() {
                guard enabled else {
                    recycleLocked(entry)
                    continue
                }
                let sector = nextSector
                let blockSectors = UInt64(blockSize) >> sectorShift
                if !entry.flags.contains(.discard) {
                    nextSector += entry.sectors * blockSectors
                }
                nextSector += blockSectors
                // As dm: the entry must end before the last sector of the log device.
                guard nextSector < device.sectors else {
                    enabled = false
                    recycleLocked(entry)
                    continue
                }
                loggedEntries += 1
                return (entry, sector)
            }
            return nil
        }
    }

    private func write(_ buffer: UnsafeMutableRawPointer, sectors: UInt64, at sector: UInt64) -> Bool {
        bio.op = .write
        bio.flags = []
        bio.sector = sector
        bio.sectors = sectors
        bio.buffer = buffer
        return waiter.run(bio, on: device).isOK
    }
}
