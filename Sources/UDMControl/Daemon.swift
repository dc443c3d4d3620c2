import Foundation
import Glibc
import Logging
import Synchronization
import UDMFuse

/// The udm daemon: takes the mount point's lock, clears a stale mount left by a killed
/// predecessor, mounts the FUSE file system, restores the saved disks, serves the control
/// socket, and on SIGTERM, SIGINT or `udm shutdown` flushes every disk and unmounts.
public final class Daemon: @unchecked Sendable {
    private let config: DaemonConfig
    private let logger: Logger
    private let stopRequested = Mutex(false)
    /// The FUSE mount went away from outside (the stop is its consequence).
    private let unmountedFromOutside = Atomic(false)
    private let stopSignal = DispatchSemaphore(value: 0)

    public init(config: DaemonConfig) {
        self.config = config
        var logger = Logger(label: "udm")
        logger.logLevel = ProcessInfo.processInfo.environment["UDM_DEBUG"] != nil ? .debug : .info
        self.logger = logger
    }

    /// Fails with one line naming the first thing this user may not use (/dev/fuse), before
    /// anything is created or started.
    public static func checkAccess() throws {
        let fd = open("/dev/fuse", O_RDWR | O_CLOEXEC)
        guard fd >= 0 else {
            let reason = String(cString: strerror(errno))
            throw ControlError("cannot open /dev/fuse: \(reason)\(geteuid() == 0 ? "" : " (udm daemon needs root)")")
        }
        close(fd)
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

        try Self.checkAccess()
        try refuseSecondDaemon()
        let mountLock = try MountLock(mountPoint: config.mountPoint, socketPath: config.socketPath)
        defer { mountLock.release() }
        try clearStaleMount()
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
        fuseOptions.transport = config.transport
        let fuse = try FuseFileSystem(mountPoint: config.mountPoint, options: fuseOptions)
        let registry = DeviceRegistry(config: config, fuse: fuse)
        try fuse.start(whenUnmounted: { [self] in
            logger.info("\(config.mountPoint) was unmounted from outside: shutting down")
            unmountedFromOutside.store(true, ordering: .releasing)
            requestStop()
        })
        if fuse.transport == .uring {
            logger.info("transport: uring (FUSE over io_uring, \(fuse.transportNote))")
        } else if config.transport == .auto {
            logger.info("transport: legacy (io_uring not used: \(fuse.transportNote))")
        } else {
            logger.info("transport: legacy")
        }
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
        // Once the mount is gone from outside, the kernel has ended the connection: nothing is
        // open any more, though the releases it owed never came.
        let open = unmountedFromOutside.load(ordering: .acquiring) ? [] : registry.openDisks()
        if open.isEmpty {
            fuse.stop(release: registry.failHeldIO)
            logger.info("stopped")
        } else {
            // A FUSE mount with open files outlives its unmount, and libfuse's workers wait on
            // it until the last close. So detach and leave without them: the process exit
            // closes /dev/fuse, which aborts the connection, and the open handles fail.
            umount2(config.mountPoint, Int32(MNT_DETACH))
            registry.failHeldIO()
            logger.warning("stopped with open disks: \(open.map(\.name).joined(separator: ", ")); their open handles fail from now on")
        }
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
        if let answer = try? ControlClient.send(ControlRequest(verb: .ping), socket: config.socketPath) {
            let pid = answer.output.split(separator: " ").last.map { "pid \($0), " } ?? ""
            throw ControlError("a udm daemon (\(pid)socket \(config.socketPath)) is already running; stop it first with `udm shutdown --socket \(config.socketPath)`")
        }
    }

    /// After kill -9 the old FUSE mount stays, with no one serving it; detach it so this daemon
    /// can mount afresh. The mount lock says no udm daemon serves it; the probe keeps a mount
    /// that still answers (another FUSE server's) from being taken over all the same.
    private func clearStaleMount() throws {
        let mounts = (try? String(contentsOfFile: "/proc/mounts", encoding: .utf8)) ?? ""
        let target = (config.mountPoint as NSString).standardizingPath
        for line in mounts.split(separator: "\n") {
            let fields = line.split(separator: " ")
            guard fields.count >= 3, fields[1] == target, fields[2].hasPrefix("fuse") else { continue }
            switch Self.probe(target) {
            case .disconnected:
                logger.warning("clearing stale mount at \(target)")
                umount2(target, Int32(MNT_DETACH))
            case .answers:
                throw ControlError("\(target) is a live FUSE mount that no udm daemon holds the lock of; unmount it first")
            case .silent:
                throw ControlError("\(target) is a FUSE mount whose server does not answer within 5 s; unmount it first")
            }
        }
    }

    enum MountState { case disconnected, answers, silent }

    /// Stats the mount's root on a separate thread: a server that is gone answers ENOTCONN
    /// at once, a hung one not at all, so the wait is bounded.
    static func probe(_ path: String) -> MountState {
        let result = Mutex<MountState?>(nil)
        let done = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            var info = stat()
            let state: MountState = stat(path, &info) == 0 || errno != ENOTCONN ? .answers : .disconnected
            result.withLock { $0 = state }
            done.signal()
        }
        guard done.wait(timeout: .now() + 5) == .success else { return .silent }
        return result.withLock { $0 } ?? .silent
    }
}
