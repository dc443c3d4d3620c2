import ArgumentParser
import Foundation

@main
struct Udm: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "udm",
        abstract: "A userspace device-mapper: dmsetup-style disks exposed as files on a FUSE mount.",
        discussion: """
            Start the daemon once with `udm daemon`; each disk NAME then appears as the file \
            MOUNT/NAME (default /run/udm/disks/NAME). Attach it to a loop device for a block \
            device (mount/udm-mount does that and mounts it).

            Tables use dmsetup's syntax: lines of `<start> <length> <target> <arguments>` in \
            512-byte sectors; a device argument is an absolute path or MOUNT/NAME of another \
            udm disk.

            Client verbs find the daemon by --socket, else $UDM_SOCKET, else \
            /run/udm/control.sock.
            """,
        subcommands: [
            DaemonCommand.self, ShutdownCommand.self,
            CreateCommand.self, LoadCommand.self, SuspendCommand.self, ResumeCommand.self,
            ClearCommand.self, RemoveCommand.self,
            ListCommand.self, TableCommand.self, StatusCommand.self, InfoCommand.self, StatsCommand.self,
            MessageCommand.self, TargetsCommand.self, SnapshotCommand.self,
            DmsetupCommand.self, InstallDmsetupCommand.self,
        ]
    )

    /// Like ArgumentParser's main, but every mistake is one line on stderr (`udm: …`, no
    /// usage block), and a misspelt verb is named as one with the nearest verb suggested.
    static func main() {
        let arguments = Array(CommandLine.arguments.dropFirst())
        // A symlink named dmsetup (udm install-dmsetup), or `udm dmsetup …`: dmsetup's own
        // command line, which is not argument-parser's.
        if (CommandLine.arguments.first.map { ($0 as NSString).lastPathComponent }) == "dmsetup" { Dmsetup.main(arguments) }
        if arguments.first == "dmsetup" { Dmsetup.main(Array(arguments.dropFirst())) }
        if let unknown = UnknownCommand.find(in: arguments, under: Udm.self) { fail(unknown.description) }
        do {
            var command = try parseAsRoot(arguments)
            try command.run()
        } catch {
            let code = exitCode(for: error)
            if code == .success { exit(withError: error) }
            let line = message(for: error).split(separator: "\n").first.map(String.init) ?? "invalid arguments"
            fail(line, status: code.rawValue)
        }
    }
}
