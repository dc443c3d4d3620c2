import UDMCore

/// `snapshot-origin <origin>`: the device whose snapshots are taken (dm-snap.c, origin).
///
/// Reads and flushes pass through to the origin device. A write is first cut at the smallest
/// chunk size among the origin's snapshots, then held until every valid snapshot that has not
/// yet copied that chunk has copied it; only then does it reach the origin device.
/// Table: `<origin>`. Status: empty. Discard and write-zeroes are not supported, as in dm.
public final class SnapshotOriginTarget: Target {
    public static let name = "snapshot-origin"
    public static let version = (1, 9, 0)

    private let device: BlockDevice
    private let deviceName: String
    private let origin: Origin

    public init(arguments: [String], context: TargetContext) throws {
        guard arguments.count == 1 else {
            throw TargetError("snapshot-origin takes one argument, <origin>; got \(arguments.count)")
        }
        guard context.begin == 0 else {
            throw TargetError("snapshot-origin must map its device from sector 0")
        }
        deviceName = arguments[0]
        device = try context.openDevice(deviceName, argument: 1, sectors: context.length)
        origin = OriginRegistry.of(context.services).origin(for: device)
    }

    public var discardBios: Int { 0 }
    public var writeZeroesBios: Int { 0 }

    public func map(_ bio: Bio) -> MapResult {
        guard bio.op == .write else { return .remapped(to: device) }
        let chunk = origin.smallestChunk
        if chunk > 0 {
            let room = chunk - bio.sector % chunk
            if bio.sectors > room { bio.acceptPartial(room) }
        }
        return origin.writeMayProceed(bio) ? .remapped(to: device) : .submitted
    }

    public func status(_ kind: StatusKind) -> String {
        kind == .table ? deviceName : ""
    }
}
