import Foundation
import Glibc
import Logging
import Synchronization
import UDMFuse

/// The udm daemon: clears a stale mount left by a killed predecessor, mounts the FUSE file
/// system, restores the saved disks, serves the control socket, and on SIGTERM, SIGINT or
/// `udm shutdown` flushes every disk and unmounts.
public final class Daemon: @unchecked Sendable {
    private let config: DaemonConfig
    private let logger: Logger
    private let stopRequested = Mutex(false)
    private let stopSignal = DispatchSemaphore(value: 0)

    public init(config: DaemonConfig) {
        self.config = config
        var logger = Logger(label: "udm")
        logger.logLevel = ProcessInfo.processInfo.environment["UDM_DEBUG"] != nil ? .debug : .info
        self.logger = logger
    }

    /// Runs until asked to stop. `ready` is called once disks are served and the socket answers.
    public func run(ready: () -> Void = {}) throws {
        // Signals are taken by one thread with sigwait; every thread made from here on
        // inherits the mask, so none of them is interrupted.
        var signals = sigset_t()
        sigemptyset(&signals)
        for signal in [SIGTERM, SIGINT, SIGHUP] { sigaddset(&signals, signal) }
        pthread_sigmask(SIG_BLOCK, &signals, nil)
        signal(SIGPIPE, SIG_IGN)

        try refuseSecondDaemon()
        clearStaleMount()
        for directory in [config.mountPoint, config.stateDirectory, (config.socketPath as NSString).deletingLastPathComponent] {
            do {
                try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            } catch {
                throw ControlError("cannot create directory \(directory): \((error as NSError).localizedDescription)")
            }
        }

        var fuseOptions = FuseFileSystem.Options()
        fuseOptions.allowOther = config.allowOther
        fuseOptions.queueDepth = config.queueDepth
        let fuse = try FuseFileSystem(mountPoint: config.mountPoint, options: fuseOptions)
        let registry = DeviceRegistry(config: config, fuse: fuse)
        fuse.start()
        for failure in try registry.restore() {
            logger.error("could not restore disk \(failure)")
        }
        let commands = ControlCommands(registry: registry, requestStop: { [self] in requestStop() })
        let server = try ControlServer(path: config.socketPath) { commands.handle($0) }
        server.start()
        logger.info("serving disks at \(config.mountPoint), control socket \(config.socketPath)")
        ready()

        let waitedFor = signals
        Thread.detachNewThread { [self] in
            var set = waitedFor
            var caught: Int32 = 0
            sigwait(&set, &caught)
            logger.info("signal \(caught): shutting down")
            requestStop()
        }
        stopSignal.wait()
        server.stop()
        registry.flushActive()
        fuse.stop(release: registry.failHeldIO)
        logger.info("stopped")
    }

    private func requestStop() {
        let first = stopRequested.withLock { stopped in
            defer { stopped = true }
            return !stopped
        }
        if first { stopSignal.signal() }
    }

    /// A live daemon already answering on the socket must not be replaced.
    private func refuseSecondDaemon() throws {
        if (try? ControlClient.send(ControlRequest(verb: .ping), socket: config.socketPath)) != nil {
            throw ControlError("a udm daemon is already running on \(config.socketPath)")
        }
    }

    /// After kill -9 the old FUSE mount stays, with no one serving it ("Transport endpoint is
    /// not connected"); detach it so this daemon can mount afresh.
    private func clearStaleMount() {
        let mounts = (try? String(contentsOfFile: "/proc/mounts", encoding: .utf8)) ?? ""
        let target = (config.mountPoint as NSString).standardizingPath
        for line in mounts.split(separator: "\n") {
            let fields = line.split(separator: " ")
            guard fields.count >= 3, fields[1] == target, fields[2].hasPrefix("fuse") else { continue }
            logger.warning("clearing stale mount at \(target)")
            umount2(target, Int32(MNT_DETACH))
        }
    }
}
