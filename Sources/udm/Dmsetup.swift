import Foundation
import Glibc
import UDMControl

/// udm invoked as `dmsetup` (argv[0], or `udm dmsetup …`): dmsetup's verbs over the daemon's
/// disks. A disk created here is also a block device, /dev/mapper/NAME (a loop device over
/// MOUNT/NAME). The daemon is started, with `udm daemon`'s defaults, if none answers.
struct Dmsetup {
    let options: DmsetupArguments
    let socket: String

    static func main(_ arguments: [String]) -> Never {
        let options: DmsetupArguments
        do {
            options = try DmsetupArguments(arguments)
        } catch {
            dmsetupFail("\(error)")
        }
        let socket = options.socket ?? ProcessInfo.processInfo.environment["UDM_SOCKET"] ?? DaemonConfig.defaultSocket
        Dmsetup(options: options, socket: socket).run()
        exit(0)
    }

    private var words: [String] { options.words }

    func run() {
        guard let verb = words.first, !options.help, verb != "help" else {
            print(Self.usage)
            return
        }
        let arguments = Array(words.dropFirst())
        switch verb {
        case "version":
            print("Library version:   1.02.185 (udm)")
            print("Driver version:    4.47.0 (udm)")
        case "targets":
            for (name, version) in DaemonConfig.targetTypes {
                print("\(name.padding(toLength: 16, withPad: " ", startingAt: 0)) v\(version)")
            }
        case "udevcomplete_all", "udevcomplete", "udevcookies", "udevcreatecookie", "udevreleasecookie":
            // There is no udev cookie to wait for: udm makes its nodes itself, at once.
            return
        case "create", "load", "reload":
            // The name and the table are read before a daemon is started for them: a missing
            // table file must not leave an empty daemon behind.
            let name = deviceName(arguments, verb, max: 2)
            let table = readTable(arguments.dropFirst().first)
            ensureDaemon()
            if verb == "create" {
                ask(ControlRequest(verb: .create, name: name, table: table.text, tableSource: table.source, mapper: true),
                    verb: verb, name: name)
            } else {
                ask(ControlRequest(verb: .load, name: name, table: table.text, tableSource: table.source), verb: "reload", name: name)
            }
        default:
            ensureDaemon()
            perform(verb, arguments)
        }
    }

    private func perform(_ verb: String, _ arguments: [String]) {
        switch verb {
        case "suspend":
            for name in deviceNames(arguments, verb) {
                ask(ControlRequest(verb: .suspend, name: name, lockfs: options.lockfs), verb: verb, name: name)
            }
        case "resume":
            for name in deviceNames(arguments, verb) { ask(ControlRequest(verb: .resume, name: name), verb: verb, name: name) }
        case "clear":
            let name = deviceName(arguments, verb, max: 1)
            ask(ControlRequest(verb: .clear, name: name), verb: verb, name: name)
        case "remove":
            for name in deviceNames(arguments, verb) { remove(name) }
        case "remove_all":
            removeAll()
        case "wipe_table":
            for name in deviceNames(arguments, verb) { wipeTable(name) }
        case "message":
            guard arguments.count >= 3 else { dmsetupFail("message needs a device, a sector and a message") }
            let name = Self.stripDirectory(arguments[0])
            let output = ask(ControlRequest(verb: .message, name: name, words: Array(arguments.dropFirst())), verb: verb, name: name)
            if !output.isEmpty { print(output) }
        case "ls":
            guard arguments.isEmpty else { dmsetupFail("ls takes no device names") }
            DmsetupReports(client: self).list()
        case "table", "status":
            DmsetupReports(client: self).lines(verb == "table" ? .table : .status, names: arguments.map(Self.stripDirectory))
        case "info":
            DmsetupReports(client: self).info(names: arguments.map(Self.stripDirectory))
        case "mknodes":
            DmsetupReports(client: self).makeNodes(names: arguments.map(Self.stripDirectory))
        default:
            dmsetupFail("unknown command '\(verb)'; see `dmsetup help`")
        }
    }

    // MARK: verbs

    /// Refused while open, as dm does; with --retry tried again a few times (dmsetup's retry
    /// waits out a transient opener such as udev's blkid). With -f an open device first gets
    /// a table that fails all I/O, as dmsetup's remove --force does.
    private func remove(_ name: String) {
        let attempts = options.retry ? 25 : 1
        for attempt in 1...attempts {
            let response = send(ControlRequest(verb: .remove, name: name))
            if response.ok { return }
            let error = response.error ?? "remove failed"
            guard error.hasSuffix("Device or resource busy") else { report(error, verb: "remove", name: name) }
            if attempt == attempts {
                if options.force { wipeTable(name) }
                dmsetupFail(error)
            }
            usleep(200_000)
        }
    }

    private func removeAll() {
        var remaining = disks().map(\.name)
        // Disks stacked on others go first; repeat while a pass removes something.
        while !remaining.isEmpty {
            let before = remaining.count
            for name in remaining.reversed() where send(ControlRequest(verb: .remove, name: name, force: options.force)).ok {
                remaining.removeAll { $0 == name }
            }
            if remaining.count == before {
                dmsetupFail("remove_all: could not remove \(remaining.joined(separator: ", "))")
            }
        }
    }

    /// A table of the same size that fails all I/O, made live.
    private func wipeTable(_ name: String) {
        let sectors = info(name).sectors
        ask(ControlRequest(verb: .load, name: name, table: "0 \(max(sectors, 1)) error"), verb: "reload", name: name)
        ask(ControlRequest(verb: .resume, name: name), verb: "resume", name: name)
    }

    // MARK: arguments

    /// /dev/mapper/NAME names the device NAME, as in dmsetup.
    static func stripDirectory(_ argument: String) -> String {
        argument.hasPrefix("/") ? (argument as NSString).lastPathComponent : argument
    }

    private func deviceName(_ arguments: [String], _ verb: String, max: Int) -> String {
        guard let name = arguments.first else { dmsetupFail("\(verb) needs a device name") }
        guard arguments.count <= max else { dmsetupFail("\(verb): unexpected argument '\(arguments[max])'") }
        return Self.stripDirectory(name)
    }

    private func deviceNames(_ arguments: [String], _ verb: String) -> [String] {
        guard !arguments.isEmpty else { dmsetupFail("\(verb) needs a device name") }
        return arguments.map(Self.stripDirectory)
    }

    /// --table, else a table file named after the device, else standard input.
    private func readTable(_ file: String?) -> (text: String, source: String?) {
        if let table = options.table {
            if let file { dmsetupFail("give --table or a table file '\(file)', not both") }
            return (table, nil)
        }
        if let file { return (readTableFile(file, failing: dmsetupFail), file) }
        return (readStandardInput(), "stdin")
    }

    // MARK: the daemon

    func send(_ request: ControlRequest) -> ControlResponse {
        do {
            return try ControlClient.send(request, socket: socket)
        } catch {
            dmsetupFail("\(error)")
        }
    }

    /// The answer, or one line in dmsetup's wording for a missing or existing device, else the
    /// daemon's own line.
    @discardableResult
    func ask(_ request: ControlRequest, verb: String, name: String?) -> String {
        let response = send(request)
        guard response.ok else { report(response.error ?? "the daemon refused the request", verb: verb, name: name) }
        return response.output
    }

    private func report(_ error: String, verb: String, name: String?) -> Never {
        if let name, error == "no disk named '\(name)'" {
            dmsetupFail(verb == "info" ? "Device does not exist." : "device-mapper: \(verb) ioctl on \(name)  failed: No such device or address")
        }
        if let name, error == "disk '\(name)' already exists" {
            dmsetupFail("device-mapper: \(verb) ioctl on \(name)  failed: Device or resource busy")
        }
        dmsetupFail(error)
    }

    func disks() -> [Reports.Info] {
        let output = ask(ControlRequest(verb: .info, json: true), verb: "info", name: nil)
        return decodeInfos(output)
    }

    func info(_ name: String) -> Reports.Info {
        let output = ask(ControlRequest(verb: .info, name: name, json: true), verb: "info", name: name)
        guard let info = decodeInfos(output).first else { dmsetupFail("Device does not exist.") }
        return info
    }

    private func decodeInfos(_ output: String) -> [Reports.Info] {
        guard let decoded = try? JSONDecoder().decode([String: [Reports.Info]].self, from: Data(output.utf8)),
              let infos = decoded["disks"] else { dmsetupFail("the daemon sent an info answer udm cannot read") }
        return infos
    }

    /// Starts `udm daemon` (its defaults, this socket) when nothing answers on the socket.
    private func ensureDaemon() {
        if (try? ControlClient.send(ControlRequest(verb: .ping), socket: socket)) != nil { return }
        let executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? "/proc/self/exe"
        // $UDM_DMSETUP_DAEMON_ARGS: more `udm daemon` options (a mount point, a state dir).
        let extra = ProcessInfo.processInfo.environment["UDM_DMSETUP_DAEMON_ARGS"]?.split(separator: " ").map(String.init) ?? []
        let arguments = [executable, "daemon", "--socket", socket] + extra
        // Its one line of error, if any, is kept in a file: a pipe would stay open in the daemon.
        var template = Array("/tmp/udm-dmsetup-start.XXXXXX".utf8CString)
        let errorFD = mkstemp(&template)
        guard errorFD >= 0 else { dmsetupFail("cannot start the udm daemon: mkstemp: \(String(cString: strerror(errno)))") }
        let errorPath = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        _ = fcntl(errorFD, F_SETFD, FD_CLOEXEC)
        defer {
            close(errorFD)
            unlink(errorPath)
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, errorFD, 2)
        let argv = arguments.map { $0.withCString { strdup($0) } } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, executable, &actions, nil, argv, environ)
        guard result == 0 else { dmsetupFail("cannot start the udm daemon: \(String(cString: strerror(result)))") }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        guard status != 0 else { return }
        let text = (try? String(contentsOfFile: errorPath, encoding: .utf8)) ?? ""
        let line = text.split(separator: "\n").first.map(String.init) ?? "it exited with status \(status)"
        dmsetupFail("cannot start the udm daemon: \(line.hasPrefix("udm: ") ? String(line.dropFirst(5)) : line)")
    }

    static let usage = """
        Usage: dmsetup (udm) [--socket PATH] [-f|--force] [--retry] [--nolockfs] [--noflush]
                [-c|-C|--columns] [-o FIELDS] [--noheadings] [--separator SEP] COMMAND ...

                create NAME [--table TABLE | TABLE_FILE]   (stdin without either)
                load|reload NAME [--table TABLE | TABLE_FILE]
                suspend [--nolockfs] NAME...     resume NAME...     clear NAME
                remove [-f] [--retry] NAME...    remove_all [-f]    wipe_table NAME...
                table [--target TYPE] [NAME...]  status [--target TYPE] [NAME...]
                info [-c [-o name,major,minor,attr,open,segments,events,uuid]] [NAME...]
                ls    targets    version    mknodes [NAME...]    message NAME SECTOR MESSAGE
                udevcomplete_all (nothing to do: udm makes its nodes itself)

        A device created here is the udm disk MOUNT/NAME and the block device /dev/mapper/NAME
        (a loop device over it). The daemon is started with `udm daemon`'s defaults if none runs.
        """
}

/// Prints `dmsetup: message` (or a line already in dmsetup's own wording) and exits 1.
func dmsetupFail(_ message: String) -> Never {
    let line = message.hasPrefix("device-mapper: ") || message == "Device does not exist." ? message : "dmsetup: \(message)"
    FileHandle.standardError.write(Data((line + "\n").utf8))
    exit(1)
}
