import UDMBackends
import UDMFuse
import UDMTargets

/// Where the daemon lives and how it builds disks.
public struct DaemonConfig: Sendable {
    public static let defaultMountPoint = "/run/udm/disks"
    public static let defaultStateDirectory = "/var/lib/udm"
    public static let defaultSocket = "/run/udm/control.sock"
    /// Where disks created through dmsetup get their block device nodes.
    public static let defaultMapperDirectory = "/dev/mapper"
    /// Clones per disk: enough for every libfuse worker to have one in flight at each level
    /// of a stack at once, small enough to bound memory.
    public static let defaultBioSetSize = 256
    /// FUSE requests each disk has in flight at most (more wait in the daemon, in order).
    public static let defaultQueueDepth = 128
    /// How FUSE requests reach the daemon (`FuseTransport`).
    public static let defaultTransport = FuseTransport.auto
    /// Seconds an NBD device holds I/O while it reconnects (and waits for a connect).
    public static let defaultNbdTimeout = 30.0

    public var mountPoint: String
    public var stateDirectory: String
    public var socketPath: String
    public var bioSetSize: Int
    public var directIO: ImageFile.DirectIO
    public var allowOther: Bool
    public var queueDepth: Int
    public var mapperDirectory: String = defaultMapperDirectory
    public var transport: FuseTransport
    public var nbdTimeout = defaultNbdTimeout

    public init(mountPoint: String = defaultMountPoint, stateDirectory: String = defaultStateDirectory,
                socketPath: String = defaultSocket, bioSetSize: Int = defaultBioSetSize,
                directIO: ImageFile.DirectIO = .auto, allowOther: Bool = false, queueDepth: Int = defaultQueueDepth,
                transport: FuseTransport = defaultTransport) {
        self.mountPoint = mountPoint
        self.stateDirectory = stateDirectory
        self.socketPath = socketPath
        self.bioSetSize = bioSetSize
        self.directIO = directIO
        self.allowOther = allowOther
        self.queueDepth = queueDepth
        self.transport = transport
    }

    /// Target types the daemon builds tables from: name and version, by name.
    public static var targetTypes: [(name: String, version: String)] {
        BuiltinTargets.registry.all.map { type in
            let (major, minor, patch) = type.version
            return (type.name, "\(major).\(minor).\(patch)")
        }
    }
}
