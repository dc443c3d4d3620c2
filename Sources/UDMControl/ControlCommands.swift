import Foundation
import Glibc

/// Maps control requests onto the registry; every failure becomes a one-line error.
struct ControlCommands: Sendable {
    let registry: DeviceRegistry
    let requestStop: @Sendable () -> Void

    func handle(_ request: ControlRequest) -> ControlResponse {
        do {
            return .success(try perform(request))
        } catch {
            return .failure("\(error)")
        }
    }

    private func perform(_ request: ControlRequest) throws -> String {
        func report<T: Encodable>(_ disks: [T], _ text: ([T]) -> String) -> String {
            request.json == true ? Reports.json(disks) : text(disks)
        }
        func name() throws -> String {
            guard let name = request.name else { throw ControlError("\(request.verb.rawValue) needs a disk name") }
            return name
        }
        func table() throws -> String {
            guard let table = request.table else { throw ControlError("\(request.verb.rawValue) needs a table") }
            return table
        }
        switch request.verb {
        case .ping: return "udm \(getpid())"
        case .create where request.mapper == true:
            try registry.createMapped(try name(), table: try table(), source: request.tableSource)
        case .create: try registry.create(try name(), table: try table(), source: request.tableSource)
        case .load: try registry.load(try name(), table: try table(), source: request.tableSource, force: request.force ?? false)
        case .suspend: try registry.suspend(try name(), lockfs: request.lockfs ?? false)
        case .resume: try registry.resumeMapped(try name())
        case .clear: try registry.clear(try name())
        case .remove: try registry.removeMapped(try name(), force: request.force ?? false)
        case .ls: return report(registry.listing(), Reports.text)
        case .table: return report(try registry.lines(request.name, .table)) { Reports.text($0, prefixed: request.name == nil) }
        case .status: return report(try registry.lines(request.name, .info)) { Reports.text($0, prefixed: request.name == nil) }
        case .info: return report(registry.addMapperInfo(try registry.info(request.name)), Reports.text)
        case .stats: return report(try registry.stats(request.name, clear: request.clearStats ?? false), Reports.text)
        case .message: return try registry.message(try name(), words: request.words ?? [])
        case .snapshotCreate:
            guard let options = request.snapshot else { throw ControlError("snapshot create needs its options") }
            try registry.createSnapshot(try name(), options)
        case .snapshotList:
            let listing = registry.listSnapshots()
            return request.json == true ? Reports.json(Reports.Snapshot.rows(of: listing), key: "snapshots") : listing
        case .snapshotRemove: try registry.removeSnapshot(try name(), force: request.force ?? false)
        case .snapshotMerge: return try registry.mergeSnapshot(try name())
        case .shutdown:
            try registry.detachMappersForShutdown(force: request.force ?? false)
            let open = registry.openDisks()
            if !(request.force ?? false) && !open.isEmpty {
                let named = open.map { "\($0.name) (\($0.handles) open)" }.joined(separator: ", ")
                throw ControlError("refused: \(open.count == 1 ? "a disk is" : "disks are") open: \(named); unmount or detach \(open.count == 1 ? "it" : "them") first, or `udm shutdown --force`")
            }
            requestStop()
        }
        return ""
    }
}
