import UDMCore

/// `log-writes <dev> <log dev>`: passes all I/O to `dev` unchanged and appends every write,
/// flush, FUA write and discard to a log on `log dev`, in an order a crash could have left
/// on the disk, so that a replay tool can rebuild the device as it was at any flush, FUA
/// write or mark (dm-log-writes.c, target 1.1; the format and order: `LogWritesLog`).
///
/// Like dm, sectors are not remapped: the target writes and logs the sector the bio has on
/// the mapped device, so it is normally the whole table (dev must cover the table's end). A
/// write's data is copied when it is mapped (dm copies too: the submitter may reuse its
/// buffer once the write ends, long before a flush logs it). The log's block size is the
/// data device's logical block size, 512 here. Entries are logged by the log's own thread,
/// never on the I/O path.
/// Message: `mark <label>` logs a MARK entry (label cut to 479 bytes). Tearing the table
/// down (remove, or a reload replacing it) logs the unflushed writes and the mark
/// `dm-log-writes-end`, and waits until they are written; then logging stops.
/// Status: `<logged entries> <last log sector used>` and ` logging_disabled` once logging
/// has stopped (a log write failed or the log device is full). Table: `<dev> <log dev>`.
/// One clone for flush and discard; write-zeroes not supported (as dm).
public final class LogWritesTarget: Target {
    public static let name = "log-writes"
    public static let version = (1, 1, 0)

    private let device: BlockDevice
    private let deviceName: String
    private let logName: String
    private let log: LogWritesLog

    public init(arguments: [String], context: TargetContext) throws {
        guard arguments.count == 2 else {
            throw TargetError("invalid argument count: expected <dev_path> <log_dev_path>, got \(arguments.count) arguments")
        }
        deviceName = arguments[0]
        logName = arguments[1]
        device = try context.openDevice(deviceName, argument: 1, sectors: context.end)
        let logDevice = try context.openDevice(logName, argument: 2)
        log = LogWritesLog(device: logDevice, blockSize: sectorSize)
    }

    // Per-bio data: the clone's entry (an unmanaged LogEntry, retained) or nil.
    public var perBioDataSize: Int { 8 }
    public var writeZeroesBios: Int { 0 }
    public var discardZeroes: Bool { device.discardZeroes }

    public func map(_ bio: Bio) -> MapResult {
        let data = bio.perBioData!
        data.storeBytes(of: nil, as: UnsafeMutableRawPointer?.self)
        guard bio.op != .read, bio.sectors > 0 || bio.op == .flush, log.isEnabled else {
            return .remapped(to: device)
        }
        var flags: LogWritesFormat.Flags = []
        if bio.op == .flush { flags.insert(.flush) }
        if bio.flags.contains(.fua) { flags.insert(.fua) }
        if bio.op == .discard { flags.insert(.discard) }
        let entry = log.makeEntry(sector: bio.sector, sectors: bio.sectors, flags: flags,
                                  data: bio.op == .write ? UnsafeRawPointer(bio.buffer) : nil)
        if bio.op == .flush { entry.flushed = log.takeUnflushed() }
        data.storeBytes(of: Unmanaged.passRetained(entry).toOpaque(), as: UnsafeMutableRawPointer?.self)
        return .remapped(to: device)
    }

    public func endIO(_ bio: Bio) {
        let data = bio.perBioData!
        guard let link = data.load(as: UnsafeMutableRawPointer?.self) else { return }
        data.storeBytes(of: nil, as: UnsafeMutableRawPointer?.self)
        // As dm, the entry is logged whether the write succeeded or not.
        log.completed(Unmanaged<LogEntry>.fromOpaque(link).takeRetainedValue())
    }

    public func message(_ words: [String]) throws -> String {
        guard words.count == 2 else {
            throw TargetError("invalid log-writes message arguments, expect 2 arguments (mark <label>), got \(words.count)")
        }
        guard words[0].lowercased() == "mark" else {
            throw TargetError("unrecognised log-writes message '\(words[0])' (expected mark <label>)")
        }
        log.mark(Array(words[1].utf8.prefix(sectorSize - LogWritesFormat.headerBytes - 1)))
        return ""
    }

    /// Logs what is still unflushed and the end mark, and waits for them (dm: log_writes_dtr).
    public func destroy() { log.close() }

    public func status(_ kind: StatusKind) -> String {
        switch kind {
        case .info: log.status
        case .table: "\(deviceName) \(logName)"
        }
    }
}
