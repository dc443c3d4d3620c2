import ArgumentParser
import Foundation

/// Listed for `udm --help`; `udm dmsetup …` is dispatched before argument parsing (see Udm.main).
struct DmsetupCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dmsetup",
        abstract: "Run dmsetup's command line (create, load, suspend, resume, remove, table, status, info, ...) against udm.",
        discussion: "Disks created this way are also block devices, /dev/mapper/NAME. See `udm dmsetup help`.")
    @Argument(parsing: .captureForPassthrough) var arguments: [String] = []

    func run() throws { Dmsetup.main(arguments) }
}

struct InstallDmsetupCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "install-dmsetup",
        abstract: "Make DIR/dmsetup a symlink to this udm binary, so suites that call dmsetup run against udm.")
    @Argument(help: "A directory, put first on PATH.") var directory: String

    func run() throws {
        let executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        let link = absolute(directory) + "/dmsetup"
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue else {
            fail("\(directory) is not a directory")
        }
        if let existing = try? FileManager.default.destinationOfSymbolicLink(atPath: link) {
            guard existing == executable else { fail("\(link) already links to \(existing); remove it first") }
        } else if FileManager.default.fileExists(atPath: link) {
            fail("\(link) exists and is not a symlink to udm; remove it first")
        } else {
            do {
                try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: executable)
            } catch {
                fail("cannot make \(link): \((error as NSError).localizedDescription)")
            }
        }
        print(link)
    }
}
