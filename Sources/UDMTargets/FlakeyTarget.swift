import UDMCore

/// `flakey <dev> <offset> <up interval> <down interval> [<#feature args> <feature args>…]`: a
/// linear mapping that misbehaves on purpose for `down interval` seconds after every `up
/// interval` seconds, counted from when the table was made (dm-flakey.c, target 1.5).
///
/// Features (names case-insensitive, at most 11 words):
/// - `error_reads`: reads fail with EIO while down;
/// - `drop_writes`: writes, flushes and discards are acknowledged and not passed down while down;
/// - `error_writes`: they fail with EIO while down (conflicts with drop_writes);
/// - `corrupt_bio_byte <Nth> <r|w> <value> <flags>`: while down, set byte N (1-based) of each
///   read (after it completes) or write (before it is passed down) to `value` (0-255), if the bio
///   has every bit of `flags` (Linux 6.x bi_opf numbering: 1 write, 1<<17 FUA; 0 matches all);
/// - `random_read_corrupt <p>`, `random_write_corrupt <p>`: while down, set a random byte of a
///   read or write to a random value with probability p/1000000000.
/// With no features, all I/O fails with EIO while down. Write corruption conflicts with
/// drop_writes and error_writes, read corruption with error_reads. A corrupted write buffer is
/// put back when the write ends, so the submitter's data is never changed (dm writes a copy).
/// Table: `<dev> <offset> <up> <down> <#feature args> <features…>`, the features given, in dm's
/// order. Status: empty. One clone for flush and discard; write-zeroes not supported (as dm).
public final class FlakeyTarget: Target {
    public static let name = "flakey"
    public static let version = (1, 5, 0)

    struct Corruption {
        /// 1-based byte of each bio.
        let byte: UInt32
        let onWrite: Bool
        let value: UInt8
        let flags: UInt32
    }

    private static let probabilityBase: UInt32 = 1_000_000_000
    private static let maxFeatureArguments = 11
    private static let nanosecondsPerSecond: UInt64 = 1_000_000_000

    private let context: TargetContext
    private let device: BlockDevice
    private let deviceName: String
    private let offset: UInt64
    private let up: UInt32
    private let down: UInt32
    /// When the table was made; up and down count from here.
    private let madeAt: UInt64
    private let errorReads: Bool
    private let dropWrites: Bool
    private let errorWrites: Bool
    private let corruption: Corruption?
    private let randomReadCorrupt: UInt32
    private let randomWriteCorrupt: UInt32
    /// Neither error_* nor drop_writes nor any corruption given: everything fails while down.
    private let failAll: Bool

    // Per-bio data: what map did to the clone (a Mark @0), and the undo records of a corrupted
    // write: (byte index u32, valid u8, original u8) for the fixed byte @4, the random one @12.
    private enum Mark: UInt8 { case none = 0, readWhileDown, writeCorrupted }
    private static let fixedUndo = 4
    private static let randomUndo = 12

    public init(arguments: [String], context: TargetContext) throws {
        guard arguments.count >= 4 else {
            throw TargetError("invalid argument count: expected <dev> <offset> <up interval> <down interval> [<#feature args> <feature args>...], got \(arguments.count) arguments")
        }
        offset = try parseSectors(arguments[1], argument: 2, what: "device sector")
        guard let up = UInt32(arguments[2]) else {
            throw TargetError("invalid up interval '\(arguments[2])': seconds, 0-\(UInt32.max)", argument: 3)
        }
        guard let down = UInt32(arguments[3]) else {
            throw TargetError("invalid down interval '\(arguments[3])': seconds, 0-\(UInt32.max)", argument: 4)
        }
        guard up != 0 || down != 0 else {
            throw TargetError("total (up + down) interval is zero", argument: 4)
        }
        guard !up.addingReportingOverflow(down).overflow else {
            throw TargetError("interval overflow: up + down exceeds \(UInt32.max) seconds", argument: 4)
        }
        self.up = up
        self.down = down

        var errorReads = false, dropWrites = false, errorWrites = false
        var corruption: Corruption?
        var randomReadCorrupt: UInt32 = 0, randomWriteCorrupt: UInt32 = 0
        if arguments.count > 4 {
            guard let count = Int(arguments[4]), count >= 0, count <= Self.maxFeatureArguments else {
                throw TargetError("invalid number of feature args '\(arguments[4])': 0-\(Self.maxFeatureArguments)", argument: 5)
            }
            guard arguments.count == 5 + count else {
                let what = arguments.count < 5 + count ? "only \(arguments.count - 5) follow" : "\(arguments.count - 5) follow"
                throw TargetError("\(count) feature args announced but \(what)", argument: 5)
            }
            var index = 5
            /// The next feature word as a number in `range`, or a TargetError naming it.
            func number(_ what: String, _ range: ClosedRange<UInt32>) throws -> UInt32 {
                index += 1
                guard index < arguments.count else {
                    throw TargetError("missing \(what)", argument: index)
                }
                guard let value = UInt32(arguments[index]), range.contains(value) else {
                    throw TargetError("invalid \(what) '\(arguments[index])': \(range.lowerBound)-\(range.upperBound)", argument: index + 1)
                }
                return value
            }
            while index < arguments.count {
                let word = arguments[index]
                let argument = index + 1
                switch word.lowercased() {
                case "error_reads":
                    guard !errorReads else { throw TargetError("feature error_reads duplicated", argument: argument) }
                    errorReads = true
                case "drop_writes":
                    guard !dropWrites else { throw TargetError("feature drop_writes duplicated", argument: argument) }
                    guard !errorWrites else { throw TargetError("feature drop_writes conflicts with feature error_writes", argument: argument) }
                    dropWrites = true
                case "error_writes":
                    guard !errorWrites else { throw TargetError("feature error_writes duplicated", argument: argument) }
                    guard !dropWrites else { throw TargetError("feature error_writes conflicts with feature drop_writes", argument: argument) }
                    errorWrites = true
                case "corrupt_bio_byte":
                    guard corruption == nil else { throw TargetError("feature corrupt_bio_byte duplicated", argument: argument) }
                    guard arguments.count - index > 4 else {
                        throw TargetError("feature corrupt_bio_byte requires 4 parameters: <Nth byte> <r|w> <value> <flags>", argument: argument)
                    }
                    let byte = try number("corrupt bio byte", 1...UInt32.max)
                    index += 1
                    let direction = arguments[index].lowercased()
                    guard direction == "r" || direction == "w" else {
                        throw TargetError("invalid corrupt bio direction '\(arguments[index])' (r or w)", argument: index + 1)
                    }
                    let value = try number("corrupt value to write into bio byte", 0...255)
                    let flags = try number("corrupt bio flags mask", 0...UInt32.max)
                    corruption = Corruption(byte: byte, onWrite: direction == "w", value: UInt8(value), flags: flags)
                case "random_read_corrupt":
                    guard randomReadCorrupt == 0 else { throw TargetError("feature random_read_corrupt duplicated", argument: argument) }
                    randomReadCorrupt = try number("random read corrupt probability", 0...Self.probabilityBase)
                case "random_write_corrupt":
                    guard randomWriteCorrupt == 0 else { throw TargetError("feature random_write_corrupt duplicated", argument: argument) }
                    randomWriteCorrupt = try number("random write corrupt probability", 0...Self.probabilityBase)
                default:
                    throw TargetError("unrecognised flakey feature '\(word)'", argument: argument)
                }
                index += 1
            }
        }
        let corruptsWrites = corruption?.onWrite == true || randomWriteCorrupt > 0
        let corruptsReads = corruption?.onWrite == false || randomReadCorrupt > 0
        if dropWrites && corruptsWrites {
            throw TargetError("drop_writes is incompatible with random_write_corrupt or corrupt_bio_byte with the w direction")
        }
        if errorWrites && corruptsWrites {
            throw TargetError("error_writes is incompatible with random_write_corrupt or corrupt_bio_byte with the w direction")
        }
        if errorReads && corruptsReads {
            throw TargetError("error_reads is incompatible with random_read_corrupt or corrupt_bio_byte with the r direction")
        }
        self.errorReads = errorReads
        self.dropWrites = dropWrites
        self.errorWrites = errorWrites
        self.corruption = corruption
        self.randomReadCorrupt = randomReadCorrupt
        self.randomWriteCorrupt = randomWriteCorrupt
        failAll = !errorReads && !dropWrites && !errorWrites && !corruptsReads && !corruptsWrites
        deviceName = arguments[0]
        device = try context.openDevice(deviceName, argument: 1, offset: offset, sectors: context.length)
        self.context = context
        madeAt = monotonicNanoseconds()
    }

    public var perBioDataSize: Int { 24 }
    public var writeZeroesBios: Int { 0 }
    public var discardZeroes: Bool { device.discardZeroes }

    /// Whether the target is in its down interval now.
    public var isDown: Bool {
        let elapsed = (monotonicNanoseconds() &- madeAt) / Self.nanosecondsPerSecond
        return elapsed % (UInt64(up) + UInt64(down)) >= UInt64(up)
    }

    public func map(_ bio: Bio) -> MapResult {
        let data = bio.perBioData!
        data.storeBytes(of: Mark.none.rawValue, as: UInt8.self)
        if isDown {
            if bio.op == .read {
                if errorReads || failAll { return .kill(.ioError) }
                data.storeBytes(of: Mark.readWhileDown.rawValue, as: UInt8.self)
            } else if dropWrites {
                bio.end(.ok)
                return .submitted
            } else if errorWrites || failAll {
                return .kill(.ioError)
            } else if bio.op == .write {
                corruptWrite(bio, data)
            }
        }
        if bio.op != .flush {
            bio.sector = offset + context.offset(of: bio.sector)
        }
        return .remapped(to: device)
    }

    public func endIO(_ bio: Bio) {
        let data = bio.perBioData!
        switch Mark(rawValue: data.load(as: UInt8.self)) {
        case .readWhileDown:
            guard bio.status.isOK else { return }
            if let corruption, !corruption.onWrite, matches(bio, corruption) {
                poke(bio, at: Int(corruption.byte - 1), corruption.value, undo: nil)
            }
            if chance(randomReadCorrupt) {
                pokeRandom(bio, undo: nil)
            }
        case .writeCorrupted:
            // Put back what corruptWrite changed, newest first.
            for record in [Self.randomUndo, Self.fixedUndo] where data.load(fromByteOffset: record + 4, as: UInt8.self) == 1 {
                let index = Int(data.load(fromByteOffset: record, as: UInt32.self))
                bio.buffer!.storeBytes(of: data.load(fromByteOffset: record + 5, as: UInt8.self), toByteOffset: index, as: UInt8.self)
            }
        default:
            break
        }
    }

    private func corruptWrite(_ bio: Bio, _ data: UnsafeMutableRawPointer) {
        data.storeBytes(of: 0, toByteOffset: Self.fixedUndo + 4, as: UInt8.self)
        data.storeBytes(of: 0, toByteOffset: Self.randomUndo + 4, as: UInt8.self)
        var changed = false
        if let corruption, corruption.onWrite, matches(bio, corruption) {
            changed = poke(bio, at: Int(corruption.byte - 1), corruption.value, undo: data + Self.fixedUndo)
        }
        if chance(randomWriteCorrupt) {
            changed = pokeRandom(bio, undo: data + Self.randomUndo) || changed
        }
        if changed { data.storeBytes(of: Mark.writeCorrupted.rawValue, as: UInt8.self) }
    }

    /// Sets byte `index` of the bio's data to `value` if the bio is that long; with `undo`,
    /// first records there (index u32, 1 u8, original u8). Returns whether it changed anything.
    @discardableResult
    private func poke(_ bio: Bio, at index: Int, _ value: UInt8, undo: UnsafeMutableRawPointer?) -> Bool {
        guard let buffer = bio.buffer, index < bio.byteCount else { return false }
        if let undo {
            undo.storeBytes(of: UInt32(index), as: UInt32.self)
            undo.storeBytes(of: 1, toByteOffset: 4, as: UInt8.self)
            undo.storeBytes(of: buffer.load(fromByteOffset: index, as: UInt8.self), toByteOffset: 5, as: UInt8.self)
        }
        buffer.storeBytes(of: value, toByteOffset: index, as: UInt8.self)
        return true
    }

    @discardableResult
    private func pokeRandom(_ bio: Bio, undo: UnsafeMutableRawPointer?) -> Bool {
        guard bio.byteCount > 0 else { return false }
        return poke(bio, at: Int.random(in: 0..<bio.byteCount), .random(in: 0...255), undo: undo)
    }

    /// The bio's flags as Linux 6.x numbers them in bi_opf, for corrupt_bio_byte's mask.
    private func matches(_ bio: Bio, _ corruption: Corruption) -> Bool {
        var opf: UInt32 = bio.op == .write ? 1 : 0
        if bio.flags.contains(.fua) { opf |= 1 << 17 }
        if bio.flags.contains(.preflush) { opf |= 1 << 18 }
        return opf & corruption.flags == corruption.flags
    }

    private func chance(_ probability: UInt32) -> Bool {
        probability > 0 && UInt32.random(in: 0..<Self.probabilityBase) < probability
    }

    public func status(_ kind: StatusKind) -> String {
        guard kind == .table else { return "" }
        var features: [String] = []
        if errorReads { features.append("error_reads") }
        if dropWrites { features.append("drop_writes") } else if errorWrites { features.append("error_writes") }
        if let corruption {
            features += ["corrupt_bio_byte", "\(corruption.byte)", corruption.onWrite ? "w" : "r",
                         "\(corruption.value)", "\(corruption.flags)"]
        }
        if randomReadCorrupt > 0 { features += ["random_read_corrupt", "\(randomReadCorrupt)"] }
        if randomWriteCorrupt > 0 { features += ["random_write_corrupt", "\(randomWriteCorrupt)"] }
        return (["\(deviceName) \(offset) \(up) \(down) \(features.count)"] + features).joined(separator: " ")
    }
}
