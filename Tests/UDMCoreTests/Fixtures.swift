import UDMCore
import UDMTargets
import UDMTestSupport

/// A live device built from `text` over in-memory devices.
func makeDevice(_ text: String, devices: [String: MemoryDevice], bioSetSize: Int = 4,
                policy: BioSet.ManyPolicy = .noWaitThenMutex) throws -> MappedDevice {
    let table = try Table(lines: TableLine.parse(text), registry: BuiltinTargets.registry,
                          resolver: NamedResolver(devices: devices), bioSetSize: bioSetSize)
    let device = MappedDevice(name: "test", manyPolicy: policy)
    device.load(table)
    try device.resume()
    return device
}

/// A sector-aligned buffer of `sectors` sectors filled with `value`.
func buffer(sectors: Int, value: UInt8 = 0) -> UnsafeMutableRawPointer {
    let pointer = UnsafeMutableRawPointer.allocate(byteCount: sectors << 9, alignment: 4096)
    pointer.initializeMemory(as: UInt8.self, repeating: value, count: sectors << 9)
    return pointer
}
