import Foundation
import Synchronization
import UDMBackends
import UDMCore
import UDMFuse
import UDMTargets

/// The daemon's disks by name: builds tables, drives each device's load / suspend / resume,
/// exposes disks on the FUSE mount and saves every change in the `StateStore`.
///
/// `lock` guards only the registry's data. It is never held across a wait for a disk's I/O
/// (a suspend, a resume that resubmits held bios) or a FUSE notification to the kernel, so
/// every command answers while another waits; under it only the state file and image files
/// are touched. A command that must wait
/// (a suspend) in the middle of its work first claims its disks as busy under the lock, waits
/// unlocked, then takes the lock again to commit; another command on a busy disk is refused.
/// A command runs to its end in the daemon even if its client goes away, so a client that
/// gives up never leaves a change half done.
public final class DeviceRegistry: @unchecked Sendable {
    struct Record {
        let device: MappedDevice
        var live: String?
        var inactive: String?
        var liveDisks: Set<String> = []
        var inactiveDisks: Set<String> = []
        var liveFiles: Set<FileIdentity> = []
        var inactiveFiles: Set<FileIdentity> = []
        /// The NBD exports each table connected to, for the link state in `info`.
        var liveNbd: [NbdDevice] = []
        var inactiveNbd: [NbdDevice] = []
        var stacksOn: Set<String> { liveDisks.union(inactiveDisks) }
        var files: Set<FileIdentity> { liveFiles.union(inactiveFiles) }
    }

    /// A table built for a disk, with what it uses.
    struct Built {
        let table: Table
        let disks: Set<String>
        let files: Set<FileIdentity>
        var nbd: [NbdDevice] = []
    }

    let config: DaemonConfig
    let fuse: FuseFileSystem
    private let store: StateStore
    /// Shared by every table this daemon builds (the copy engine, the snapshot origins).
    private let services = TargetServices()
    private let lock = NSLock()
    // Guarded by lock, as is everything below.
    private(set) var records: [String: Record] = [:]
    /// Creation order, so that saved definitions restore lower disks first.
    private(set) var order: [String] = []
    /// Snapshot groups by origin.
    var groups: [String: SnapshotGroup] = [:]
    /// Block devices of disks created through dmsetup, by disk.
    var mappers: [String: MapperNode] = [:]
    /// Disks a command is working on unlocked, with the command's name.
    private var busy: [String: String] = [:]
    /// Names whose kernel cache entry goes stale; invalidated once the lock is released.
    private var staleEntries: [String] = []
    /// Saved definitions that could not be restored; kept so that nothing is forgotten.
    private var unrestored: [StateStore.Definition] = []
    /// Transient snapshots found in the saved definitions at start: their contents died with
    /// the previous daemon, so they are reported, not restored.
    private(set) var lostSnapshots: [String] = []
    /// Finished merges are completed here, never on the merge target's thread.
    let mergeFinisher = DispatchQueue(label: "udm.merge-finisher")

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

    /// Runs `body` under the registry lock, then tells the kernel of the disks that came or went.
    func locked<T>(_ body: () throws -> T) rethrows -> T {
        lock.lock()
        defer {
            let stale = staleEntries
            staleEntries = []
            lock.unlock()
            stale.forEach { fuse.invalidate(name: $0) }
        }
        return try body()
    }

    func record(_ name: String) throws -> Record {
        guard let record = records[name] else { throw ControlError("no disk named '\(name)'") }
        return record
    }

    // MARK: busy claims

    /// Refuses if a command is working on `name`.
    func checkIdle(_ name: String) throws {
        if let command = busy[name] { throw ControlError("disk \(name) is busy: \(command) in progress") }
    }

    /// Marks `names` busy with `command` (all or none).
    func claim(_ names: [String], for command: String) throws {
        try names.forEach(checkIdle)
        names.forEach { busy[$0] = command }
    }

    func release(_ names: [String]) {
        names.forEach { busy[$0] = nil }
    }

    // MARK: building blocks, with the lock held

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

    /// `nbd`: the table's NBD exports, connected before the lock was taken.
    func build(_ text: String, source: String?, for name: String, nbd: NbdConnections) throws -> Built {
        let resolver = TableResolver(owner: name, mountPoint: config.mountPoint,
                                     mountDevice: FileIdentity.mountDevice(config.mountPoint), directIO: config.directIO,
                                     connections: nbd,
                                     lookup: { [records] in records[$0]?.device },
                                     dependsOn: { [unowned self] in self.dependsOn($0, $1) })
        let parsed = Result { () throws(TableError) -> [TableLine] in try TableLine.parse(text) }
        // Before any target is built: a snapshot target reads (and may initialise) its COW.
        if case .success(let lines) = parsed { try checkCows(lines, for: name) }
        let result = parsed.flatMap { lines in
            Result { () throws(TableError) -> Table in
                try Table(lines: lines, registry: BuiltinTargets.registry, resolver: resolver,
                          bioSetSize: config.bioSetSize, services: services)
            }
        }
        switch result {
        case .success(let table): return Built(table: table, disks: resolver.disks, files: resolver.files, nbd: resolver.nbd)
        case .failure(let error): throw ControlError(source.map { "\($0): \(error)" } ?? "\(error)")
        }
    }

    /// Creates a disk, live at once (a new device holds no I/O, so its resume waits for nothing).
    func insertDisk(_ name: String, table text: String, source: String?, nbd: NbdConnections) throws {
        guard records[name] == nil else { throw ControlError("disk '\(name)' already exists") }
        let built = try build(text, source: source, for: name, nbd: nbd)
        let device = MappedDevice(name: name)
        device.load(built.table)
        try device.resume()
        records[name] = Record(device: device, live: text, liveDisks: built.disks, liveFiles: built.files, liveNbd: built.nbd)
        order.append(name)
        fuse.add(name: name, device: device)
        staleEntries.append(name)
    }

    /// Puts a table in `name`'s inactive slot.
    func loadTable(_ name: String, table text: String, source: String?, nbd: NbdConnections) throws {
        var record = try record(name)
        let built = try build(text, source: source, for: name, nbd: nbd)
        record.device.load(built.table)
        record.inactive = text
        record.inactiveDisks = built.disks
        record.inactiveFiles = built.files
        record.inactiveNbd = built.nbd
        records[name] = record
    }

    /// Drops `name`'s inactive table.
    func clearTable(_ name: String) {
        guard var record = records[name] else { return }
        record.device.clear()
        record.inactive = nil
        record.inactiveDisks = []
        record.inactiveFiles = []
        for nbd in record.inactiveNbd { nbd.close() }
        record.inactiveNbd = []
        records[name] = record
    }

    /// After the device's resume: what was loaded is now live.
    func promoteLoaded(_ name: String) {
        guard var record = records[name], let inactive = record.inactive, record.device.loaded == nil else { return }
        record.live = inactive
        record.liveDisks = record.inactiveDisks
        record.liveFiles = record.inactiveFiles
        // The old table gets no more I/O; its NBD connections go now, not when it is freed.
        for nbd in record.liveNbd { nbd.close() }
        record.liveNbd = record.inactiveNbd
        record.inactive = nil
        record.inactiveDisks = []
        record.inactiveFiles = []
        record.inactiveNbd = []
        records[name] = record
    }

    /// Takes a disk out of the registry and off the mount; returns its device, whose held I/O
    /// the caller fails once the lock is released.
    func dropDisk(_ name: String) -> MappedDevice? {
        guard let record = records.removeValue(forKey: name) else { return nil }
        for nbd in record.liveNbd + record.inactiveNbd { nbd.close() }
        order.removeAll { $0 == name }
        fuse.remove(name: name)
        staleEntries.append(name)
        return record.device
    }

    /// Disks whose tables stack on `name`.
    func users(of name: String) -> [String] {
        records.filter { $0.value.stacksOn.contains(name) }.map(\.key).sorted()
    }

    // MARK: steps done unlocked

    /// Connects to the NBD exports `tables` name; done before the lock is taken, as a connect
    /// may wait up to --nbd-timeout.
    func connectNbd(_ tables: String...) -> NbdConnections {
        NbdConnections(connecting: tables.flatMap(NbdConnections.uris), timeout: config.nbdTimeout)
    }

    /// Closes the devices of `connections` that no disk's table kept (its build failed, a check
    /// refused it, the command lost a race), at once and outside the lock.
    func closeUnused(_ connections: NbdConnections...) {
        let kept: Set<ObjectIdentifier> = locked {
            Set(records.values.flatMap { record in (record.liveNbd + record.inactiveNbd).map { ObjectIdentifier($0) } })
        }
        for device in connections.flatMap(\.connected) where !kept.contains(ObjectIdentifier(device)) {
            device.close()
        }
    }

    // MARK: steps done unlocked, on a claimed disk

    /// Resumes a claimed disk (held I/O is resubmitted on this thread) and records its loaded
    /// table as live.
    func resumeClaimed(_ name: String, _ device: MappedDevice) throws {
        do {
            try device.resume()
        } catch {
            throw ControlError("\(error)")
        }
        try locked {
            promoteLoaded(name)
            try save()
        }
    }

    /// `dmsetup remove --force` on a claimed open disk: waits for its I/O, then puts in a table
    /// that fails all I/O.
    func failAllIO(_ name: String, _ device: MappedDevice) throws {
        device.suspend()
        let built = try locked { try build("0 \(max(device.sectors, 1)) error", source: nil, for: name, nbd: NbdConnections()) }
        device.load(built.table)
        try? device.resume()
    }

    // MARK: verbs

    /// Checked, then the NBD exports are connected unlocked, then checked again and built.
    public func create(_ name: String, table text: String, source: String? = nil) throws {
        let check = {
            try Self.validate(name: name)
            try self.checkIdle(name)
            guard self.records[name] == nil else { throw ControlError("disk '\(name)' already exists") }
        }
        try checkedBuild(text, check: check) { try insertDisk(name, table: text, source: source, nbd: $0) }
    }

    public func load(_ name: String, table text: String, source: String? = nil, force: Bool = false) throws {
        let check = {
            try self.checkIdle(name)
            _ = try self.record(name)
            if !force, let role = self.topologyRole(of: name) {
                throw ControlError("\(role): a new table would break its snapshots; use udm snapshot remove, or load --force")
            }
        }
        try checkedBuild(text, check: check) { try loadTable(name, table: text, source: source, nbd: $0) }
    }

    /// `check` under the lock; `text`'s NBD exports connected unlocked; then `check` again,
    /// `build` with those connections and a save, under the lock. Unkept connections close.
    private func checkedBuild(_ text: String, check: () throws -> Void, build: (NbdConnections) throws -> Void) throws {
        try locked(check)
        let nbd = connectNbd(text)
        defer { closeUnused(nbd) }
        try locked {
            try check()
            try build(nbd)
            try save()
        }
    }

    public func clear(_ name: String) throws {
        try locked {
            try checkIdle(name)
            _ = try record(name)
            clearTable(name)
            try save()
        }
    }

    public func suspend(_ name: String) throws {
        let device = try locked {
            try checkIdle(name)
            return try record(name).device
        }
        device.suspend()
        try locked { try save() }
    }

    public func resume(_ name: String) throws {
        let device = try locked {
            let device = try record(name).device
            try claim([name], for: "resume")
            return device
        }
        defer { locked { release([name]) } }
        // As dm's do_resume: a loaded table goes live only on a suspended device, so that no
        // I/O still reads the old table when it is released.
        if device.loaded != nil && !device.isSuspended { device.suspend() }
        try resumeClaimed(name, device)
    }

    public func remove(_ name: String, force: Bool) throws {
        let isSnapshot = try locked {
            _ = try record(name)
            try checkIdle(name)
            return origin(ofSnapshot: name) != nil
        }
        if isSnapshot { return try removeSnapshot(name, force: force) }
        if force, let snapshots = locked({ groups[name]?.snapshots }) {
            for snapshot in snapshots { try removeSnapshot(snapshot, force: true) }
        }
        let (device, isOpen, real) = try locked { () throws -> (MappedDevice, Bool, String?) in
            let device = try record(name).device
            let users = users(of: name)
            guard users.isEmpty else {
                throw ControlError("disk '\(name)' is in use by \(users.joined(separator: ", "))")
            }
            if let group = groups[name], !force {
                if let merge = group.merging {
                    throw ControlError("\(name) is merging \(merge.snapshot): wait for the merge to finish or use --force")
                }
                throw ControlError("\(name) has snapshots \(group.snapshots.joined(separator: " ")): remove them first or use --force")
            }
            let openCount = fuse.openCount(name: name)
            if openCount > 0 && !force {
                throw ControlError("disk '\(name)' is open (\(openCount) handle\(openCount == 1 ? "" : "s")); close it or use --force")
            }
            let real = groups[name]?.real
            try claim([name] + (real.map { [$0] } ?? []), for: "remove")
            return (device, openCount > 0, real)
        }
        let claimed = [name] + (real.map { [$0] } ?? [])
        defer { locked { release(claimed) } }
        if isOpen { try failAllIO(name, device) }
        let realDevice = try locked { () throws -> MappedDevice? in
            _ = dropDisk(name)
            groups[name] = nil
            let realDevice = real.flatMap(dropDisk)
            try save()
            return realDevice
        }
        device.failHeldIO()
        realDevice?.failHeldIO()
        device.destroy()
        realDevice?.destroy()
    }

    // MARK: reports

    public func message(_ name: String, words: [String]) throws -> String {
        guard words.count >= 2, let sector = UInt64(words[0]) else {
            throw ControlError("usage: udm message NAME SECTOR WORDS...")
        }
        // The target answers outside the lock: a message may wait for the target's own work.
        let table = try locked { try record(name).device.live }
        guard let table, sector < table.sectors else {
            throw ControlError("sector \(sector) is outside disk '\(name)'")
        }
        let target = table.entries[table.entryIndex(for: sector)].target
        do {
            return try target.message(Array(words.dropFirst()))
        } catch {
            throw ControlError("\(name): \(error)")
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

    /// With the lock held.
    func save() throws {
        let definitions = order.map { name in
            let record = records[name]!
            return StateStore.Definition(name: name, table: record.live, inactive: record.inactive,
                                         suspended: record.device.isSuspended, snapshots: groups[name],
                                         mapper: mappers[name] != nil ? true : nil)
        } + unrestored
        try store.save(definitions)
    }

    /// Recreates the saved disks; a disk whose lower disk is restored later is retried until no
    /// more progress is made. Returns one line per disk that could not be restored.
    func restore() throws -> [String] {
        var pending = try store.load()
        let savedGroups = pending.contains { $0.snapshots != nil }
        // Until restored, a definition is kept as unrestored so every save in between keeps it.
        locked { unrestored = pending }
        var failures: [String: String] = [:]
        var mapperFailures: [String] = []
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
                    // Before the disks above it are restored: their tables may name its node.
                    if definition.mapper == true { mapperFailures += attachRestoredMapper(definition.name) }
                    if let group = definition.snapshots { locked { groups[definition.name] = group } }
                    if let inactive = definition.inactive {
                        try load(definition.name, table: inactive, source: "saved inactive table", force: true)
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
        try locked {
            if !savedGroups { adoptGroupsFromTables() }
            // Transient snapshots did not survive; the groups forget them.
            for origin in groups.keys { groups[origin]?.snapshots.removeAll { records[$0] == nil } }
            try save()
        }
        for origin in locked({ groups.filter { $0.value.merging != nil }.map(\.key) }) { watchMerge(origin) }
        return pending.map { "\($0.name): \(failures[$0.name] ?? "not restored")" }
            + mapperFailures
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

