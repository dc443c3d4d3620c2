import UDMCore

/// `linear <dev> <offset>`: the target's sectors are the device's, from `offset` on
/// (dm-linear.c).
///
/// Table: `<dev> <offset>`. Status: empty. One clone for flush, discard and write-zeroes.
public final class LinearTarget: Target {
    public static let name = "linear"
    public static let version = (1, 4, 0)

    private let context: TargetContext
    private let device: BlockDevice
    private let deviceName: String
    private let offset: UInt64

    public init(arguments: [String], context: TargetContext) throws {
        guard arguments.count == 2 else {
            throw TargetError("invalid argument count: expected <dev> <offset>, got \(arguments.count) arguments")
        }
        offset = try parseSectors(arguments[1], argument: 2, what: "device sector")
        deviceName = arguments[0]
        device = try context.openDevice(deviceName, argument: 1, offset: offset, sectors: context.length)
        self.context = context
    }

    public var discardZeroes: Bool { device.discardZeroes }

    public func map(_ bio: Bio) -> MapResult {
        if bio.op != .flush {
            bio.sector = offset + context.offset(of: bio.sector)
        }
        return .remapped(to: device)
    }

    public func status(_ kind: StatusKind) -> String {
        kind == .table ? "\(deviceName) \(offset)" : ""
    }
}
