import CFuse3
import Glibc
import Synchronization
import UDMCore

/// The FUSE mount: one directory whose regular files are the disks (libfuse3 low-level API,
/// multi-threaded loop). The only module that sees libfuse.
public final class FuseFileSystem: @unchecked Sendable {
    public struct Options: Sendable {
        public var allowOther = false
        /// Upper bound on libfuse worker threads. A worker only turns a request into a bio and
        /// goes back for the next; held I/O holds the request, not the worker.
        public var maxThreads: UInt32 = 16
        public var idleThreads: UInt32 = 8
        /// FUSE requests a disk has in flight at most; more wait in the daemon, in order.
        public var queueDepth = 128
        /// How requests arrive and replies leave (`FuseTransport`).
        public var transport = FuseTransport.legacy
        /// Ring entries with the io_uring transport, all CPU queues together: as many as the
        /// request pool has requests. Never more, so a ring thread never waits for a request
        /// only it could free; not fewer, so that held disks cannot take every entry of a queue
        /// much before they would take every request (max_background is set below that).
        public var ringEntries = RequestPool.Sizes.standard.requests
        public init() {}
    }

    public let mountPoint: String
    let requests = RequestPool()
    let directory: DiskDirectory
    private let session: OpaquePointer
    private var loopThread: pthread_t?
    /// Set by `stop`, so the loop's end is not taken for an unmount from outside.
    private let stopping = Mutex(false)
    private var whenUnmounted: @Sendable () -> Void = {}
    private let options: Options
    private let ring: UringTransport?
    /// The transport in use: "uring" or "legacy".
    public private(set) var transport = FuseTransport.legacy
    /// Why `auto` fell back to legacy, or what the rings are (for the log).
    public private(set) var transportNote = ""

    /// Mounts at `mountPoint` (which must exist); I/O is served once `start` is called.
    public init(mountPoint: String, options: Options = Options()) throws {
        self.mountPoint = mountPoint
        self.options = options
        var ring: UringTransport?
        if options.transport != .legacy {
            if let reason = UringProbe.reasonUnavailable() {
                guard options.transport == .auto else { throw FuseError("FUSE over io_uring unavailable: \(reason)") }
                transportNote = reason
            } else {
                ring = UringTransport(totalEntries: options.ringEntries)
            }
        }
        self.ring = ring
        directory = DiskDirectory(requests: requests, queueDepth: options.queueDepth, ring: ring)
        var mountOptions = "fsname=udm,subtype=udm,default_permissions"
        if options.allowOther { mountOptions += ",allow_other" }
        let argv = ["udm", "-o", mountOptions].map { $0.withCString { strdup($0) } }
        let argvPointer = UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>.allocate(capacity: argv.count + 1)
        for (i, arg) in argv.enumerated() { argvPointer[i] = arg }
        argvPointer[argv.count] = nil
        var args = fuse_args(argc: Int32(argv.count), argv: argvPointer, allocated: 0)
        defer {
            fuse_opt_free_args(&args)
            argv.forEach { free($0) }
            argvPointer.deallocate()
        }
        var ops = FuseOperations.table
        // The callbacks reach the disks through the session's userdata; `directory` lives as
        // long as the session.
        let userdata = Unmanaged.passUnretained(directory).toOpaque()
        guard let session = fuse_session_new(&args, &ops, MemoryLayout<fuse_lowlevel_ops>.size, userdata) else {
            throw FuseError("cannot create the FUSE session (is /dev/fuse there?)")
        }
        self.session = session
        guard fuse_session_mount(session, mountPoint) == 0 else {
            fuse_session_destroy(session)
            throw FuseError("cannot mount FUSE at \(mountPoint)")
        }
        if ring != nil {
            var io = UringTransport.customIO
            let result = fuse_session_custom_io(session, &io, fuse_session_fd(session))
            guard result == 0 else {
                fuse_session_unmount(session)
                fuse_session_destroy(session)
                throw FuseError("cannot install the io_uring transport's device hooks: \(String(cString: strerror(-result)))")
            }
        }
    }

    /// Serves requests on libfuse's worker threads (and the rings) until `stop`. With the
    /// io_uring transport, waits for INIT and the rings' registration; `auto` falls back to
    /// legacy when that fails, `uring` throws the reason (after unmounting). When the mount goes
    /// away from outside (`fusermount3 -u`, or a lazy unmount once its last file is closed), the
    /// kernel ends the connection and `whenUnmounted` runs, on the loop's thread.
    public func start(whenUnmounted: @escaping @Sendable () -> Void = {}) throws {
        self.whenUnmounted = whenUnmounted
        var thread = pthread_t()
        let context = Unmanaged.passRetained(self).toOpaque()
        pthread_create(&thread, nil, { context in
            let fs = Unmanaged<FuseFileSystem>.fromOpaque(context!).takeRetainedValue()
            fs.runLoop()
            return nil
        }, context)
        loopThread = thread
        guard let ring else { return }
        do {
            transportNote = try ring.start(session: session, fd: fuse_session_fd(session))
            transport = .uring
        } catch {
            guard options.transport == .auto else {
                stop()
                throw FuseError("FUSE over io_uring unavailable: \(error)")
            }
            transportNote = "\(error)"
        }
    }

    private func runLoop() {
        let config = fuse_loop_cfg_create()
        fuse_loop_cfg_set_clone_fd(config, 0)
        fuse_loop_cfg_set_max_threads(config, options.maxThreads)
        fuse_loop_cfg_set_idle_threads(config, options.idleThreads)
        _ = fuse_session_loop_mt(session, config)
        fuse_loop_cfg_destroy(config)
        if !stopping.withLock({ $0 }) { whenUnmounted() }
    }

    /// Stops serving and unmounts. Unmounting aborts the kernel connection, which wakes the
    /// workers blocked reading /dev/fuse. Every request is answered before the session goes:
    /// those waiting in a disk's queue fail with EIO, `release` ends the I/O the disks hold
    /// (suspended, delayed), and the rest end as their I/O does (waited for, up to 10 s).
    public func stop(release: () -> Void = {}) {
        stopping.withLock { $0 = true }
        fuse_session_exit(session)
        umount2(mountPoint, Int32(MNT_DETACH))
        directory.all.forEach { $0.queue.close() }
        release()
        _ = requests.waitUntilIdle(seconds: 10)
        ring?.stop(waitSeconds: 5)
        if let loopThread { pthread_join(loopThread, nil) }
        loopThread = nil
        // Already detached above; destroy closes the device.
        fuse_session_destroy(session)
    }

    /// Shows `device` as MOUNT/NAME. Only the mount's own table changes: the kernel learns of it
    /// at `invalidate`, which the caller runs outside its locks.
    public func add(name: String, device: MappedDevice) {
        directory.add(name: name, device: device)
    }

    /// Takes MOUNT/NAME away; as `add`, the kernel learns of it at `invalidate`.
    public func remove(name: String) {
        directory.remove(name: name)
    }

    /// Tells the kernel to forget what it cached for MOUNT/NAME. A call into the kernel, which
    /// can wait for FUSE requests in progress: never make it holding a lock a request may need.
    public func invalidate(name: String) {
        _ = name.withCString { fuse_lowlevel_notify_inval_entry(session, FuseOperations.rootInode, $0, name.utf8.count) }
    }

    /// FUSE requests in MOUNT/NAME's disk now, and waiting for room in its queue.
    public func requestCounts(name: String) -> (active: Int, waiting: Int) {
        directory.disk(name: name)?.queue.counts ?? (0, 0)
    }

    public var queueDepth: Int { options.queueDepth }

    /// Open handles on MOUNT/NAME.
    public func openCount(name: String) -> Int {
        directory.disk(name: name)?.openCount.load(ordering: .relaxed) ?? 0
    }

    public func path(of name: String) -> String { mountPoint + "/" + name }
}

public struct FuseError: Error, CustomStringConvertible, Sendable {
    public let description: String
    init(_ description: String) { self.description = description }
}

