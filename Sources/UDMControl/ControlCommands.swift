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
        case .create: try registry.create(try name(), table: try table(), source: request.tableSource)
        case .load: try registry.load(try name(), table: try table(), source: request.tableSource)
        case .suspend: try registry.suspend(try name())
        case .resume: try registry.resume(try name())
        case .clear: try registry.clear(try name())
        case .remove: try registry.remove(try name(), force: request.force ?? false)
        case .ls: return registry.list()
        case .table: return try registry.lines(request.name, .table)
        case .status: return try registry.lines(request.name, .info)
        case .info: return try registry.info(request.name)
        case .message: return try registry.message(try name(), words: request.words ?? [])
        case .snapshotCreate:
            guard let options = request.snapshot else { throw ControlError("snapshot create needs its options") }
            try registry.createSnapshot(try name(), options)
        case .snapshotList: return registry.listSnapshots()
        case .snapshotRemove: try registry.removeSnapshot(try name(), force: request.force ?? false)
        case .snapshotMerge: return try registry.mergeSnapshot(try name())
        case .shutdown:
            requestStop()
        }
        return ""
    }
}
