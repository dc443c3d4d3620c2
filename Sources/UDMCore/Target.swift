/// A mapping target (dm: `struct target_type` and its instance `struct dm_target`).
///
/// A target is made from its table arguments by `init(arguments:context:)`, which validates
/// them and throws a `TargetError` naming the bad argument. The core hands it clones of at most
/// `maxIOLength` sectors that never cross its end; `map` remaps, takes over, or fails each one.
public protocol Target: AnyObject, Sendable {
    /// The table name, e.g. "linear".
    static var name: String { get }
    /// Shown by `udm targets`, as dmsetup does.
    static var version: (Int, Int, Int) { get }
    init(arguments: [String], context: TargetContext) throws

    /// Largest read/write clone, in sectors, measured from the target's begin (0 = no limit).
    var maxIOLength: UInt64 { get }
    /// Clones a flush, a discard or a write-zeroes needs (0 = not supported).
    var flushBios: Int { get }
    var discardBios: Int { get }
    var writeZeroesBios: Int { get }
    /// Bytes of per-clone state the target keeps in `Bio.perBioData`.
    var perBioDataSize: Int { get }
    /// Whether discarded sectors of this target read back as zeros.
    var discardZeroes: Bool { get }

    func map(_ bio: Bio) -> MapResult
    /// Called when a clone this target mapped ends, before its parent hears of it.
    func endIO(_ bio: Bio)
    /// `.info` is dmsetup status's target part; `.table` prints the arguments back so that a
    /// table round-trips.
    func status(_ kind: StatusKind) -> String
    /// `udm message` (dm: the target's message method).
    func message(_ words: [String]) throws -> String
    /// Called when the table becomes live, and before and after the device suspends.
    func resume()
    func presuspend()
    func postsuspend()
    /// Called once when the table is torn down, with no I/O in flight: a reload's resume
    /// replaced it, or its device is removed (dm: the target's dtr).
    func destroy()
}

public enum StatusKind: Sendable { case info, table }

public extension Target {
    var maxIOLength: UInt64 { 0 }
    var flushBios: Int { 1 }
    var discardBios: Int { 1 }
    var writeZeroesBios: Int { 1 }
    var perBioDataSize: Int { 0 }
    var discardZeroes: Bool { false }
    func endIO(_ bio: Bio) {}
    func message(_ words: [String]) throws -> String {
        throw TargetError("target \(Self.name) does not take messages")
    }
    func resume() {}
    func presuspend() {}
    func postsuspend() {}
    func destroy() {}
}

/// A constructor or message failure, with the argument it is about (dm: `ti->error`).
public struct TargetError: Error, Sendable, CustomStringConvertible {
    /// 1-based index into the target's arguments, when one argument is at fault.
    public let argument: Int?
    public let message: String

    public init(_ message: String, argument: Int? = nil) {
        self.message = message
        self.argument = argument
    }

    public var description: String { message }
}

/// What a target knows of its place in the table, and how it reaches lower devices.
public final class TargetContext: @unchecked Sendable {
    public let begin: UInt64
    public let length: UInt64
    public var end: UInt64 { begin + length }
    public let services: TargetServices
    private let resolver: DeviceResolver
    public private(set) var devices: [BlockDevice] = []

    public init(begin: UInt64, length: UInt64, resolver: DeviceResolver, services: TargetServices) {
        self.begin = begin
        self.length = length
        self.resolver = resolver
        self.services = services
    }

    /// Opens the device named by table argument `argument` (1-based) and checks that
    /// `sectors` sectors from `offset` lie inside it.
    public func openDevice(_ name: String, argument: Int, offset: UInt64 = 0, sectors: UInt64 = 0) throws -> BlockDevice {
        let device: BlockDevice
        do {
            device = try resolver.open(name)
        } catch {
            throw TargetError("cannot open device \(name): \(error)", argument: argument)
        }
        let (end, overflow) = offset.addingReportingOverflow(sectors)
        if overflow || end > device.sectors {
            throw TargetError("device \(name) is too small: \(device.sectors) sectors, table needs \(offset)+\(sectors)", argument: argument)
        }
        devices.append(device)
        return device
    }

    /// The target-relative offset of a device sector (dm_target_offset).
    @inline(__always)
    public func offset(of sector: UInt64) -> UInt64 { sector - begin }
}

/// Turns a device argument of a table into a device (the control plane resolves image paths
/// and other udm disks; tests pass in-memory devices).
public protocol DeviceResolver: Sendable {
    func open(_ name: String) throws -> BlockDevice
}

/// Parses a decimal sector count argument the way dm's sscanf does, but strictly.
public func parseSectors(_ text: String, argument: Int, what: String) throws -> UInt64 {
    guard let value = UInt64(text) else {
        throw TargetError("invalid \(what) '\(text)'", argument: argument)
    }
    return value
}
