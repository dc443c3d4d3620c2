import UDMBackends
import UDMCore

/// Resolves the device arguments of one table being built: an absolute path opens an image
/// file or block device (once per table, however many lines name it); an NBD URI
/// (`nbd://`, `nbds://`, `nbd+unix://`, ...) takes the export connected before the registry
/// lock was taken (see `NbdConnections`), once per table too; `MOUNT/NAME` stacks on
/// another udm disk in-process, refusing a disk that depends on the one being built. A path
/// that reaches the udm mount some other way (a symlink, `..`) is refused: through the
/// kernel, the daemon would wait on itself. `major:minor` names a block device, and a loop
/// device over a udm disk's file stands for that disk (see `DeviceArgument`).
final class TableResolver: DeviceResolver, @unchecked Sendable {
    private let owner: String
    private let mountPoint: String
    private let directIO: ImageFile.DirectIO
    private let connections: NbdConnections
    private let lookup: (String) -> MappedDevice?
    private let dependsOn: (String, String) -> Bool
    private let mountDevice: UInt64?
    private var opened: [String: BlockDevice] = [:]
    /// udm disks this table stacks on.
    private(set) var disks: Set<String> = []
    /// Files and devices this table opened.
    private(set) var files: Set<FileIdentity> = []
    /// NBD exports this table connected to.
    private(set) var nbd: [NbdDevice] = []

    /// `dependsOn(a, b)` tells whether disk a's tables reach disk b.
    init(owner: String, mountPoint: String, mountDevice: UInt64?, directIO: ImageFile.DirectIO,
         connections: NbdConnections,
         lookup: @escaping (String) -> MappedDevice?, dependsOn: @escaping (String, String) -> Bool) {
        self.owner = owner
        self.mountPoint = mountPoint
        self.mountDevice = mountDevice
        self.directIO = directIO
        self.connections = connections
        self.lookup = lookup
        self.dependsOn = dependsOn
    }

    func open(_ name: String) throws -> BlockDevice {
        if let device = opened[name] { return device }
        let device: BlockDevice
        let prefix = mountPoint.hasSuffix("/") ? mountPoint : mountPoint + "/"
        if name.hasPrefix(prefix) {
            let disk = String(name.dropFirst(prefix.count))
            guard let mapped = lookup(disk) else {
                throw ControlError("no udm disk named '\(disk)'")
            }
            if disk == owner || dependsOn(disk, owner) {
                throw ControlError("stacking \(owner) on \(disk) would make a cycle")
            }
            disks.insert(disk)
            device = mapped
        } else if let uri = NbdURI(name) {
            do {
                let nbdDevice = try connections.device(for: uri)
                nbd.append(nbdDevice)
                device = nbdDevice
            } catch {
                throw ControlError(error.cause)
            }
        } else if let path = try DeviceArgument.path(forNumber: name) {
            device = try open(path)
        } else if let disk = try DeviceArgument.udmDisk(behind: name, mountPrefix: prefix) {
            device = try open(prefix + disk)
        } else {
            guard name.hasPrefix("/") else {
                throw ControlError("'\(name)' is neither an absolute path, an NBD URI nor \(prefix)NAME")
            }
            guard !FileIdentity.isOn(mountDevice, path: name) else {
                throw ControlError("'\(name)' is on the udm mount: name a udm disk as \(prefix)NAME")
            }
            device = try ImageFile(path: name, directIO: directIO)
            files.formUnion(FileIdentity.identities(name))
        }
        opened[name] = device
        return device
    }
}
