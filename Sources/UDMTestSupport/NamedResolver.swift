import UDMCore

/// Resolves a table's device arguments to the devices a test gives by name.
public struct NamedResolver: DeviceResolver {
    public let devices: [String: BlockDevice]

    public init(devices: [String: BlockDevice]) {
        self.devices = devices
    }

    public func open(_ name: String) throws -> BlockDevice {
        guard let device = devices[name] else { throw TargetError("no such device") }
        return device
    }
}
