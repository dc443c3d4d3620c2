import ArgumentParser
import UDMControl

struct CreateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "create",
        abstract: "Create a disk from a table and make it live (dmsetup create).",
        discussion: "Without --table or --table-file the table is read from standard input.")
    @Argument(help: "The disk's name; it appears as MOUNT/NAME.") var name: String
    @OptionGroup var tableOptions: TableOptions
    @OptionGroup var client: ClientOptions

    func run() throws {
        let (text, source) = tableOptions.read()
        try client.send(ControlRequest(verb: .create, name: name, table: text, tableSource: source))
    }
}

struct LoadCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "load",
        abstract: "Load a table into a disk's inactive slot; `udm resume` makes it live (dmsetup load/reload).",
        aliases: ["reload"])
    @Argument(help: "The disk's name.") var name: String
    @Flag(help: "Load even over a snapshot origin, a snapshot or an ORIGIN-real disk, whose snapshots then stop working.")
    var force = false
    @OptionGroup var tableOptions: TableOptions
    @OptionGroup var client: ClientOptions

    func run() throws {
        let (text, source) = tableOptions.read()
        try client.send(ControlRequest(verb: .load, name: name, table: text, tableSource: source, force: force))
    }
}

struct SuspendCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "suspend",
        abstract: "Wait for the disk's I/O in flight to finish and hold new I/O until resume.")
    @Argument(help: "The disk's name.") var name: String
    @OptionGroup var client: ClientOptions

    func run() throws { try client.send(ControlRequest(verb: .suspend, name: name)) }
}

struct ResumeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "resume",
        abstract: "Make a loaded table live (if any) and release held I/O.")
    @Argument(help: "The disk's name.") var name: String
    @OptionGroup var client: ClientOptions

    func run() throws { try client.send(ControlRequest(verb: .resume, name: name)) }
}

struct ClearCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "clear",
        abstract: "Drop a disk's inactive (loaded, not resumed) table.")
    @Argument(help: "The disk's name.") var name: String
    @OptionGroup var client: ClientOptions

    func run() throws { try client.send(ControlRequest(verb: .clear, name: name)) }
}

struct RemoveCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "remove",
        abstract: "Remove a disk. Refused while its file is open or it has snapshots, unless --force.")
    @Argument(help: "The disk's name.") var name: String
    @Flag(help: "Remove even while open (I/O through open handles fails from then on), and an origin with its snapshots.")
    var force = false
    @OptionGroup var client: ClientOptions

    func run() throws { try client.send(ControlRequest(verb: .remove, name: name, force: force)) }
}

struct MessageCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "message",
        abstract: "Send a message to the target at SECTOR of a disk (dmsetup message).")
    @Argument(help: "The disk's name.") var name: String
    @Argument(help: "A sector inside the target to send to.") var sector: UInt64
    @Argument(help: "The message words.") var words: [String]
    @OptionGroup var client: ClientOptions

    func run() throws {
        try client.send(ControlRequest(verb: .message, name: name, words: [String(sector)] + words))
    }
}
