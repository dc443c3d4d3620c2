import ArgumentParser
import UDMControl

struct ListCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "ls", abstract: "List disks and their files.")
    @OptionGroup var client: ClientOptions

    func run() throws { try client.send(ControlRequest(verb: .ls)) }
}

struct TableCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "table",
        abstract: "Print the live table of a disk (or of every disk), as dmsetup table does.")
    @Argument(help: "The disk's name; all disks if omitted.") var name: String?
    @OptionGroup var client: ClientOptions

    func run() throws { try client.send(ControlRequest(verb: .table, name: name)) }
}

struct StatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Print each target's status line, as dmsetup status does.")
    @Argument(help: "The disk's name; all disks if omitted.") var name: String?
    @OptionGroup var client: ClientOptions

    func run() throws { try client.send(ControlRequest(verb: .status, name: name)) }
}

struct InfoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "info",
        abstract: "Print a disk's state, tables, open count, size, bioset size and file.")
    @Argument(help: "The disk's name; all disks if omitted.") var name: String?
    @OptionGroup var client: ClientOptions

    func run() throws { try client.send(ControlRequest(verb: .info, name: name)) }
}

struct TargetsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "targets", abstract: "List the target types udm knows, with versions.")

    func run() throws {
        for (name, version) in DaemonConfig.targetTypes {
            print("\(name.padding(toLength: 16, withPad: " ", startingAt: 0)) v\(version)")
        }
    }
}
