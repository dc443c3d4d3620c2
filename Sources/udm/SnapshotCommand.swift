import ArgumentParser
import UDMBackends
import UDMControl

struct SnapshotCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "snapshot",
        abstract: "Take, list, merge and remove snapshots of a disk (like lvcreate -s, lvs, lvconvert --merge, lvremove).",
        subcommands: [SnapshotCreateCommand.self, SnapshotListCommand.self, SnapshotRemoveCommand.self, SnapshotMergeCommand.self])
}

struct SnapshotCreateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "create",
        abstract: "Take a snapshot SNAP of ORIGIN, its changes kept in a COW file.",
        discussion: """
            ORIGIN's I/O is held (not failed) while its table moves to an ORIGIN-real disk (listed by `udm ls`) \
            and ORIGIN becomes snapshot-origin over it; SNAP appears as MOUNT/SNAP. The COW file \
            uses the Linux kernel's persistent snapshot format unless --transient.
            """)
    @Argument(help: "The disk to snapshot.") var origin: String
    @Argument(help: "The new snapshot disk's name.") var snapshot: String
    @Option(help: "The COW file: new, or empty (zeros); created (sparse unless --preallocate) if missing. Or an NBD URI of an empty export.") var cow: String
    @Option(help: "Size of a new COW file: bytes, or with K, M, G, T (default: room for a full copy of ORIGIN).")
    var size: String?
    @Option(parsing: .unconditional, help: "Chunk size in sectors, a power of two (0: the COW header's, else 32).")
    var chunkSize = "0"
    @Flag(help: "Keep exceptions in memory only (N): lost when the daemon stops.") var transient = false
    @Flag(help: "Persistent with overflow (PO): when the COW is full, snapshot writes fail but it stays readable.")
    var overflow = false
    @Flag(help: ArgumentHelp("Write zeros over the new COW file so its blocks exist, like an LV.",
                             discussion: "In a sparse file each first copy makes the file system allocate, and every metadata commit then waits for its journal: first writes run about half as fast."))
    var preallocate = false
    @Flag(help: "Adopt the snapshot store an existing COW file holds, with its exceptions (else such a COW is refused).")
    var reuseCow = false
    @OptionGroup var client: ClientOptions

    func validate() throws {
        if transient && overflow { throw ValidationError("--transient and --overflow exclude each other") }
        guard UInt64(chunkSize) != nil else {
            throw ValidationError("invalid chunk size '\(chunkSize)': give a number of 512-byte sectors, a power of two (or 0)")
        }
        if let size, parseSize(size) == nil { throw ValidationError("--size '\(size)': use bytes or a number with K, M, G or T") }
    }

    func run() throws {
        let options = ControlRequest.SnapshotOptions(origin: origin, cow: NbdURI(cow) == nil ? absolute(cow) : cow, size: size.flatMap(parseSize),
                                                     chunkSize: UInt64(chunkSize)!, transient: transient, overflow: overflow,
                                                     preallocate: preallocate, reuseCow: reuseCow)
        try client.send(ControlRequest(verb: .snapshotCreate, name: snapshot, snapshot: options))
    }
}

struct SnapshotListCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list", abstract: "List snapshots: origin, chunk size, COW use and state.")
    @Flag(help: "Print JSON: {\"snapshots\": [{\"origin\", \"snapshot\", \"chunk\", \"usePercent\", \"state\"}]} (usePercent null when not known).")
    var json = false
    @OptionGroup var client: ClientOptions

    func run() throws { try client.send(ControlRequest(verb: .snapshotList, json: json)) }
}

struct SnapshotRemoveCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "remove",
        abstract: "Remove a snapshot; the origin goes back to its plain table after its last one. The COW file stays.")
    @Argument(help: "The snapshot's name.") var snapshot: String
    @Flag(help: "Remove even while the snapshot's file is open.") var force = false
    @OptionGroup var client: ClientOptions

    func run() throws { try client.send(ControlRequest(verb: .snapshotRemove, name: snapshot, force: force)) }
}

/// Bytes from "4096", "64M", "1G" (binary units).
func parseSize(_ text: String) -> UInt64? {
    let units: [Character: UInt64] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40]
    if let unit = text.last.flatMap({ units[Character($0.uppercased())] }) {
        return UInt64(text.dropLast()).flatMap { $0.multipliedReportingOverflow(by: unit).overflow ? nil : $0 * unit }
    }
    return UInt64(text)
}

struct SnapshotMergeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "merge",
        abstract: "Roll the origin back to a snapshot (like lvconvert --merge), online.",
        discussion: """
            SNAP goes away as a disk; its origin shows the snapshot's content at once while the \
            COW's chunks are copied back in the background. Shows progress until the merge is \
            done and the origin is back on its own table (or on snapshot-origin while other \
            snapshots remain). The COW file is left in place. An interrupted merge (daemon \
            stopped or killed) goes on when the daemon starts again.
            """)
    @Argument(help: "The snapshot to merge.") var snapshot: String
    @Flag(help: "Return at once; `udm snapshot list` shows the progress.") var noWait = false
    @OptionGroup var client: ClientOptions

    func run() throws {
        let origin = client.ask(ControlRequest(verb: .snapshotMerge, name: snapshot))
        guard !noWait else {
            print("merging \(snapshot) into \(origin) in the background")
            return
        }
        MergeProgress(origin: origin, client: client).follow()
    }
}
