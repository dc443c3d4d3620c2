import Foundation
import Synchronization
import UDMBackends
import UDMCore
import UDMFuse
import UDMTargets

/// The daemon's disks by name: builds tables, drives each device's load / suspend / resume,
/// exposes disks on the FUSE mount and saves every change in the `StateStore`.
///
/// Control operations are serialised by one lock, except for the wait in suspend (which can
/// depend on another disk being resumed, so it must not hold the lock).
public final class DeviceRegistry: @unchecked Sendable {
    struct Record {
        let device: MappedDevice
        var live: String?
        var inactive: String?
        var liveDisks: Set<String> = []
        var inactiveDisks: Set<String> = []
        var stacksOn: Set<String> { liveDisks.union(inactiveDisks) }
    }

    let config: DaemonConfig
    let fuse: FuseFileSystem
    private let store: StateStore
    /// Shared by every table this daemon builds (the copy engine, the snapshot origins).
    private let services = TargetServices()
    private let lock = NSRecursiveLock()
    private(set) var records: [String: Record] = [:]
    /// Creation order, so that saved definitions restore lower disks first.
    private(set) var order: [String] = []
    /// Saved definitions that could not be restored; kept so that nothing is forgotten.
    private var unrestored: [StateStore.Definition] = []
    /// Transient snapshots found in the saved definitions at start: their contents died with
    /// the previous daemon, so they are reported, not restored.
    private(set) var lostSnapshots: [String] = []

    init(config: DaemonConfig, fuse: FuseFileSystem) {
        self.config = config
        self.fuse = fuse
        self.store = StateStore(directory: config.stateDirectory)
    }

    /// Names dmsetup allows, less "/" so a name is one file on the mount.
    static func validate(name: String) throws {
        let allowed = Set("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ#+-.:=@_")
        // Quote at most a line's worth of what a client sent.
        let shown = name.count > 64 ? name.prefix(64) + "... (\(name.utf8.count) bytes)" : name[...]
        let rule = "a name is 1-127 of 0-9 A-Z a-z # + - . : = @ _, and not . or .."
        if name.isEmpty { throw ControlError("invalid disk name '': empty; \(rule)") }
        if name == "." || name == ".." {
            throw ControlError("invalid disk name '\(name)': it names a directory, not a file on the mount; \(rule)")
        }
        if name.count > 127 { throw ControlError("invalid disk name '\(shown)': \(name.count) characters, more than 127; \(rule)") }
        if let bad = name.first(where: { !allowed.contains($0) }) {
            let printable = bad.asciiValue.map { $0 > 0x20 && $0 < 0x7F } ?? false
            let shownCharacter = printable ? "'\(bad)'" : bad.unicodeScalars.map { "U+" + String($0.value, radix: 16, uppercase: true) }.joined()
            throw ControlError("invalid disk name '\(shown)': \(shownCharacter) is not allowed; \(rule)")
        }
    }

    func locked<T>(_ body: () throws -> T) rethrows -> T {
        lock.lock()
        defer { lock.unlock() }
        return try body()
    }

    func record(_ name: String) throws -> Record {
        guard let record = records[name] else { throw ControlError("no disk named '\(name)'") }
        return record
    }

    /// Whether disk `a`'s tables reach disk `b`.
    private func dependsOn(_ a: String, _ b: String) -> Bool {
        var seen: Set<String> = []
        var queue = [a]
        while let next = queue.popLast() {
            for lower in records[next]?.stacksOn ?? [] {
                if lower == b { return true }
                if seen.insert(lower).inserted { queue.append(lower) }
            }
        }
        return false
    }

    private func build(_ text: String, source: String?, for name: String) throws -> (Table, Set<String>) {
        let resolver = TableResolver(owner: name, mountPoint: config.mountPoint, directIO: config.directIO,
                                     lookup: { [records] in records[$0]?.device },
                                     dependsOn: { [unowned self] in self.dependsOn($0, $1) })
        let result = Result { () throws(TableError) -> Table in
            try Table(lines: try TableLine.parse(text), registry: BuiltinTargets.registry, resolver: resolver,
                      bioSetSize: config.bioSetSize, services: services)
        }
        switch result {
        case .success(let table): return (table, resolver.disks)
        case .failure(let error): throw ControlError(source.map { "\($0): \(error)" } ?? "\(error)")
        }
    }

    // MARK: verbs

    public func create(_ name: String, table text: String, source: String? = nil) throws {
        try locked {
            try Self.validate(name: name)
            guard records[name] == nil else { throw ControlError("disk '\(name)' already exists") }
            let (table, disks) = try build(text, source: source, for: name)
            let device = MappedDevice(name: name)
            device.load(table)
            try device.resume()
            records[name] = Record(device: device, live: text, liveDisks: disks)
            order.append(name)
            fuse.add(name: name, device: device)
            try save()
        }
    }

    public func load(_ name: String, table text: String, source: String? = nil) throws {
        try locked {
            var record = try record(name)
            let (table, disks) = try build(text, source: source, for: name)
            record.device.load(table)
            record.inactive = text
            record.inactiveDisks = disks
            records[name] = record
            try save()
        }
    }

    public func clear(_ name: String) throws {
        try locked {
            var record = try record(name)
            record.device.clear()
            record.inactive = nil
            record.inactiveDisks = []
            records[name] = record
            try save()
        }
    }

    public func suspend(_ name: String) throws {
        let device = try locked { try record(name).device }
        device.suspend()
        try locked { try save() }
    }

    public func resume(_ name: String) throws {
        // As dm's do_resume: a loaded table goes live only on a suspended device, so that no I/O
        // still reads the old table when it is released. Suspend outside the lock (see suspend),
        // then check again under it: another client may have resumed in between.
        func mustSuspend(_ device: MappedDevice) -> Bool { device.loaded != nil && !device.isSuspended }
        while true {
            let device = try locked { try record(name).device }
            if mustSuspend(device) { device.suspend() }
            let resumed = try locked { () throws -> Bool in
                var record = try record(name)
                guard !mustSuspend(record.device) else { return false }
                do {
                    try record.device.resume()
                } catch {
                    throw ControlError("\(error)")
                }
                if let inactive = record.inactive {
                    record.live = inactive
                    record.liveDisks = record.inactiveDisks
                    record.inactive = nil
                    record.inactiveDisks = []
                }
                records[name] = record
                try save()
                return true
            }
            if resumed { return }
        }
    }

    public func remove(_ name: String, force: Bool) throws {
        try locked {
            let record = try record(name)
            let users = records.filter { $0.value.stacksOn.contains(name) }.map(\.key).sorted()
            guard users.isEmpty else {
                throw ControlError("disk '\(name)' is in use by \(users.joined(separator: ", "))")
            }
            let openCount = fuse.openCount(name: name)
            if openCount > 0 {
                guard force else {
                    throw ControlError("disk '\(name)' is open (\(openCount) handle\(openCount == 1 ? "" : "s")); close it or use --force")
                }
                // dmsetup remove --force: replace the table with one that fails all I/O.
                let (table, _) = try build("0 \(max(record.device.sectors, 1)) error", source: nil, for: name)
                record.device.suspend()
                record.device.load(table)
                try? record.device.resume()
            }
            fuse.remove(name: name)
            records[name] = nil
            order.removeAll { $0 == name }
            record.device.failHeldIO()
            try save()
        }
    }

    // MARK: reports

    public func names() -> [String] { locked { order } }

    public func message(_ name: String, words: [String]) throws -> String {
        try locked {
            guard words.count >= 2, let sector = UInt64(words[0]) else {
                throw ControlError("usage: udm message NAME SECTOR WORDS...")
            }
            guard let table = try record(name).device.live, sector < table.sectors else {
                throw ControlError("sector \(sector) is outside disk '\(name)'")
            }
            let target = table.entries[table.entryIndex(for: sector)].target
            do {
                return try target.message(Array(words.dropFirst()))
            } catch {
                throw ControlError("\(name): \(error)")
            }
        }
    }

    /// Whether a saved table is a transient snapshot (which cannot outlive its daemon).
    static func isTransientSnapshot(_ table: String) -> Bool {
        guard let lines = try? TableLine.parse(table), lines.count == 1, lines[0].type == "snapshot",
              lines[0].arguments.count == 4 else { return false }
        return lines[0].arguments[2].uppercased() == "N"
    }

    var mountPoint: String { config.mountPoint }

    // MARK: persistence

    private func save() throws {
        let definitions = order.map { name in
            let record = records[name]!
            return StateStore.Definition(name: name, table: record.live, inactive: record.inactive,
                                         suspended: record.device.isSuspended)
        } + unrestored
        try store.save(definitions)
    }

    /// Recreates the saved disks; a disk whose lower disk is restored later is retried until no
    /// more progress is made. Returns one line per disk that could not be restored.
    func restore() throws -> [String] {
        var pending = try store.load()
        // Until restored, a definition is kept as unrestored so every save in between keeps it.
        locked { unrestored = pending }
        var failures: [String: String] = [:]
        var progress = true
        while progress && !pending.isEmpty {
            progress = false
            for definition in pending {
                locked { unrestored.removeAll { $0.name == definition.name } }
                if let table = definition.table, Self.isTransientSnapshot(table) {
                    pending.removeAll { $0.name == definition.name }
                    locked { lostSnapshots.append(definition.name) }
                    failures[definition.name] = nil
                    continue
                }
                do {
                    guard let table = definition.table else { throw ControlError("no live table saved") }
                    // Restored active, as LVM activates at boot: a disk left suspended would hold
                    // every I/O until someone remembers to resume it.
                    try create(definition.name, table: table, source: "saved table")
                    if let inactive = definition.inactive {
                        try load(definition.name, table: inactive, source: "saved inactive table")
                    }
                    pending.removeAll { $0.name == definition.name }
                    failures[definition.name] = nil
                    progress = true
                } catch {
                    failures[definition.name] = "\(error)"
                    locked { if records[definition.name] == nil { unrestored.append(definition) } }
                }
            }
        }
        try locked { try save() }
        return pending.map { "\($0.name): \(failures[$0.name] ?? "not restored")" }
            + lostSnapshots.map { "\($0): a transient (N) snapshot; its exceptions lived in the previous daemon's memory and are gone" }
    }

    /// At shutdown: flushes every active disk, so what was acknowledged is durable.
    func flushActive() {
        let devices = locked { order.compactMap { records[$0]?.device } }
        let waiter = BioWaiter()
        for device in devices where !device.isSuspended {
            waiter.run(Bio(op: .flush), on: device)
        }
    }

    /// At shutdown, once the mount is gone: fails the I/O suspended disks hold (it was never
    /// acknowledged), so that no worker or writer waits forever.
    func failHeldIO() {
        locked { order.compactMap { records[$0]?.device } }.forEach { $0.failHeldIO() }
    }
}

