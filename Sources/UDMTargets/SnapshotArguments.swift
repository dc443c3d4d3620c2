import UDMCore
import UDMExceptionStore

/// The arguments `snapshot` and `snapshot-merge` share, `<origin> <COW> <store> <chunk size>`,
/// checked and with both devices opened.
struct SnapshotArguments {
    let originName: String
    let cowName: String
    /// Upper-cased: P, PO or N.
    let storeType: String
    /// As given: 0 means the header's (or the default).
    let chunkSize: UInt64
    let origin: BlockDevice
    let cow: BlockDevice

    init(_ arguments: [String], context: TargetContext, target: String, stores: [String]) throws {
        let storeList = stores.joined(separator: "|")
        guard arguments.count == 4 else {
            throw TargetError("\(target) takes <origin> <COW> <\(storeList)> <chunk size>; got \(arguments.count) arguments")
        }
        storeType = arguments[2].uppercased()
        guard stores.contains(storeType) else {
            throw TargetError("invalid store type '\(arguments[2])': use \(stores.joined(separator: " or "))", argument: 3)
        }
        guard let chunk = UInt64(arguments[3]), chunk & (chunk &- 1) == 0, chunk <= PersistentStore.maxChunkSize else {
            throw TargetError("invalid chunk size '\(arguments[3])': a power of two up to \(PersistentStore.maxChunkSize) sectors, or 0", argument: 4)
        }
        guard context.begin == 0 else { throw TargetError("\(target) must map its device from sector 0") }
        chunkSize = chunk
        originName = arguments[0]
        cowName = arguments[1]
        origin = try context.openDevice(originName, argument: 1, sectors: context.length)
        cow = try context.openDevice(cowName, argument: 2)
    }
}
