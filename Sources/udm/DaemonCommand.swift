import ArgumentParser
import CLinux
import Foundation
import Glibc
import UDMBackends
import UDMControl
import UDMFuse

extension ImageFile.DirectIO: ExpressibleByArgument {}
extension FuseTransport: ExpressibleByArgument {}

struct DaemonCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "daemon",
        abstract: "Start the udm daemon: mount the disk directory, restore saved disks, serve the control socket.",
        discussion: """
            Without --foreground it starts the daemon in the background (output in \
            STATE-DIR/daemon.log) and returns once disks are served. A stale mount left by a \
            killed daemon is cleared on start.
            """)

    @Option(help: "Directory where each disk appears as a file.") var mount = DaemonConfig.defaultMountPoint
    @Option(help: "Directory for the saved disk definitions.") var stateDir = DaemonConfig.defaultStateDirectory
    @Option(help: "The control socket (default: $UDM_SOCKET, else \(DaemonConfig.defaultSocket)).") var socket: String?
    @Flag(help: "Stay in the foreground, logging to stderr.") var foreground = false
    @Option(help: "Clones in each disk's bioset (at least 1; raised to a table's largest duplicate count).")
    var biosetSize = DaemonConfig.defaultBioSetSize
    @Option(help: "FUSE requests each disk has in flight at most; more wait in the daemon, in order (at least 1).")
    var queueDepth = DaemonConfig.defaultQueueDepth
    @Option(help: "O_DIRECT on image files: auto (where the file accepts it), on, off.") var directIO = ImageFile.DirectIO.auto
    @Option(help: "Seconds an NBD device holds its I/O while it reconnects before failing it with EIO (also how long a connect may take).")
    var nbdTimeout = DaemonConfig.defaultNbdTimeout
    @Flag(help: "Let users other than root open the disk files (FUSE allow_other).") var allowOther = false
    @Option(help: "Directory for the block device nodes of disks created through dmsetup.")
    var mapperDir = DaemonConfig.defaultMapperDirectory
    @Option(help: "How FUSE requests arrive: auto (io_uring where the kernel allows it, else legacy), uring (fail if it cannot), legacy (/dev/fuse).")
    var transport = DaemonConfig.defaultTransport

    func validate() throws {
        guard biosetSize >= 1 else { throw ValidationError("--bioset-size must be at least 1") }
        guard queueDepth >= 1 else { throw ValidationError("--queue-depth must be at least 1") }
        guard nbdTimeout > 0 && nbdTimeout <= 86400 else { throw ValidationError("--nbd-timeout must be more than 0 and at most 86400 seconds") }
    }

    private var config: DaemonConfig {
        var config = DaemonConfig(mountPoint: absolute(mount), stateDirectory: absolute(stateDir),
                                  socketPath: absolute(socket ?? ProcessInfo.processInfo.environment["UDM_SOCKET"] ?? DaemonConfig.defaultSocket),
                                  bioSetSize: biosetSize, directIO: directIO, allowOther: allowOther, queueDepth: queueDepth,
                                  transport: transport)
        config.mapperDirectory = absolute(mapperDir)
        config.nbdTimeout = nbdTimeout
        return config
    }

    func run() throws {
        let config = self.config
        if foreground {
            do {
                try Daemon(config: config).run()
            } catch {
                fail("\(error)")
            }
            return
        }
        do {
            try Daemon.checkAccess()
            try FileManager.default.createDirectory(atPath: config.stateDirectory, withIntermediateDirectories: true)
        } catch let error as ControlError {
            fail("\(error)")
        } catch {
            fail("cannot create directory \(config.stateDirectory): \((error as NSError).localizedDescription)")
        }
        let logPath = config.stateDirectory + "/daemon.log"
        let pid = spawnForeground(config: config, log: logPath)
        // Ready when the socket answers; give up if the child dies first.
        for _ in 0..<300 {
            if let answer = try? ControlClient.send(ControlRequest(verb: .ping), socket: config.socketPath),
               answer.output == "udm \(pid)" {
                print("udm daemon running (pid \(pid))")
                return
            }
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid {
                let log = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
                let lastLine = log.split(separator: "\n").last.map(String.init) ?? "no output"
                fail("the daemon exited during start: \(lastLine.hasPrefix("udm: ") ? String(lastLine.dropFirst(5)) : lastLine)")
            }
            usleep(100_000)
        }
        fail("the daemon did not answer on \(config.socketPath) within 30 s; see \(logPath)")
    }

    /// Starts `udm daemon --foreground` with the same settings in a new session, output to `log`.
    private func spawnForeground(config: DaemonConfig, log: String) -> pid_t {
        let executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? "/proc/self/exe"
        var arguments = [executable, "daemon", "--foreground", "--mount", config.mountPoint,
                         "--state-dir", config.stateDirectory, "--socket", config.socketPath,
                         "--bioset-size", String(config.bioSetSize), "--direct-io", config.directIO.rawValue,
                         "--queue-depth", String(config.queueDepth), "--transport", config.transport.rawValue,
                         "--mapper-dir", config.mapperDirectory, "--nbd-timeout", String(config.nbdTimeout)]
        if config.allowOther { arguments.append("--allow-other") }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, log, O_WRONLY | O_CREAT | O_APPEND, 0o600)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        posix_spawnattr_setflags(&attributes, udm_posix_spawn_setsid)
        defer {
            posix_spawn_file_actions_destroy(&actions)
            posix_spawnattr_destroy(&attributes)
        }
        let argv = arguments.map { $0.withCString { strdup($0) } } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, executable, &actions, &attributes, argv, environ)
        guard result == 0 else { fail("cannot start the daemon: \(String(cString: strerror(result)))") }
        return pid
    }
}

struct ShutdownCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "shutdown",
        abstract: "Stop the daemon cleanly: flush every disk, unmount, exit. Refused while a disk is open, unless --force.",
        discussion: "Returns once the daemon process has exited, so the mount point is free for the next one.")
    @Flag(help: "Stop even while disks are open: I/O through open handles (a mounted file system) fails from then on.")
    var force = false
    @OptionGroup var client: ClientOptions

    func run() throws {
        let pid = client.ask(ControlRequest(verb: .ping)).split(separator: " ").last.flatMap { pid_t(String($0)) }
        // A daemon that exits before its answer arrives has still done what was asked: the
        // wait below decides.
        let response = try? ControlClient.send(ControlRequest(verb: .shutdown, force: force), socket: client.socketPath)
        if let response, !response.ok { fail(response.error ?? "the daemon refused to shut down") }
        if response == nil, (try? ControlClient.send(ControlRequest(verb: .ping), socket: client.socketPath)) != nil {
            fail("the daemon at \(client.socketPath) did not take the shutdown request")
        }
        for _ in 0..<300 {
            let gone = pid.map { !processRuns($0) }
                ?? ((try? ControlClient.send(ControlRequest(verb: .ping), socket: client.socketPath)) == nil)
            if gone { return }
            usleep(100_000)
        }
        fail("the daemon\(pid.map { " (pid \($0))" } ?? "") did not exit within 30 s")
    }

    /// True while the process exists and has not exited (a zombie waiting for its parent has).
    private func processRuns(_ pid: pid_t) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let end = stat.range(of: ") ", options: .backwards) else { return false }
        return !["Z", "X"].contains(stat[end.upperBound...].prefix(1))
    }
}

/// Makes a path absolute against the current directory (libfuse keeps the mount path string).
func absolute(_ path: String) -> String {
    path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
}
