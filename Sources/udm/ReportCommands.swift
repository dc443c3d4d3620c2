import ArgumentParser
import UDMControl

struct ListCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "ls", abstract: "List disks and their files.")
    @Flag(help: "Print JSON: {\"disks\": [{\"name\", \"file\"}]}.") var json = false
    @OptionGroup var client: ClientOptions

    func run() throws { try client.send(ControlRequest(verb: .ls, json: json)) }
}

struct TableCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "table",
        abstract: "Print the live table of a disk (or of every disk), as dmsetup table does.")
    @Argument(help: "The disk's name; all disks if omitted.") var name: String?
    @Flag(help: "Print JSON: {\"disks\": [{\"name\", \"lines\": [{\"start\", \"length\", \"target\", \"params\"}]}]}.") var json = false
    @OptionGroup var client: ClientOptions

    func run() throws { try client.send(ControlRequest(verb: .table, name: name, json: json)) }
}

struct StatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Print each target's status line, as dmsetup status does.")
    @Argument(help: "The disk's name; all disks if omitted.") var name: String?
    @Flag(help: "Print JSON, shaped as for `udm table --json` with each target's status as params.") var json = false
    @OptionGroup var client: ClientOptions

    func run() throws { try client.send(ControlRequest(verb: .status, name: name, json: json)) }
}

struct InfoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "info",
        abstract: "Print a disk's state, tables, open count, size, bioset size and file.")
    @Argument(help: "The disk's name; all disks if omitted.") var name: String?
    @Flag(help: "Print JSON: {\"disks\": [{\"name\", \"state\", \"liveTable\", \"inactiveTable\", \"openCount\", \"targets\", \"sectors\", \"biosetSize\", \"queueDepth\", \"requestsActive\", \"requestsWaiting\", \"file\"}]}.")
    var json = false
    @OptionGroup var client: ClientOptions

    func run() throws { try client.send(ControlRequest(verb: .info, name: name, json: json)) }
}

struct StatsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stats",
        abstract: "Print a disk's I/O statistics (like /proc/diskstats and dmstats).",
        discussion: """
            Per operation (read; write, with write-zeroes; discard; flush): I/Os completed, \
            merges (I/Os the disk cut into several pieces), sectors, total time from arrival to \
            completion, and a latency histogram in log2 buckets of microseconds (bucket N counts \
            latencies from N up to 2N us); plus I/Os in flight. Counted since the disk was \
            created or last cleared.
            """)
    @Argument(help: "The disk's name; all disks if omitted.") var name: String?
    @Flag(help: "Print JSON: {\"disks\": [{\"name\", \"inFlight\", \"read\"|\"write\"|\"discard\"|\"flush\": {\"ios\", \"merges\", \"sectors\", \"nanoseconds\", \"histogram\": [32 counts]}}]}.")
    var json = false
    @Flag(help: "Start the counters again from zero after printing them.") var clear = false
    @OptionGroup var client: ClientOptions

    func run() throws { try client.send(ControlRequest(verb: .stats, name: name, json: json, clearStats: clear)) }
}

struct TargetsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "targets", abstract: "List the target types udm knows, with versions.")
    @Flag(help: "Print JSON: {\"targets\": [{\"name\", \"version\"}]}.") var json = false

    func run() throws {
        if json {
            print(Reports.json(DaemonConfig.targetTypes.map { Reports.TargetType(name: $0.name, version: $0.version) }, key: "targets"))
            return
        }
        for (name, version) in DaemonConfig.targetTypes {
            print("\(name.padding(toLength: 16, withPad: " ", startingAt: 0)) v\(version)")
        }
    }
}
