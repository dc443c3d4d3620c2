import UDMCore
import UDMTargets
import UDMTestSupport

/// A live device built from `text` over in-memory devices.
func makeDevice(_ text: String, devices: [MemoryDevice], services: TargetServices = TargetServices()) throws -> MappedDevice {
    let table = try Table(lines: TableLine.parse(text), registry: BuiltinTargets.registry,
                          resolver: NamedResolver(devices: Dictionary(uniqueKeysWithValues: devices.map { ($0.name, $0) })),
                          bioSetSize: 16, services: services)
    let device = MappedDevice(name: "test")
    device.load(table)
    try device.resume()
    return device
}

/// Why `text` is rejected, or "accepted".
func rejection(_ text: String, devices: [MemoryDevice]) -> String {
    do {
        _ = try makeDevice(text, devices: devices)
        return "accepted"
    } catch {
        return "\(error)"
    }
}

/// A sector-aligned buffer of `sectors` sectors, byte i = `seed` &+ i.
final class TestBuffer {
    let pointer: UnsafeMutableRawPointer
    let sectors: Int

    init(sectors: Int, seed: UInt8 = 0) {
        self.sectors = sectors
        pointer = .allocate(byteCount: sectors << 9, alignment: 4096)
        for i in 0..<(sectors << 9) { pointer.storeBytes(of: seed &+ UInt8(truncatingIfNeeded: i), toByteOffset: i, as: UInt8.self) }
    }

    deinit { pointer.deallocate() }

    var bytes: [UInt8] { Array(UnsafeRawBufferPointer(start: pointer, count: sectors << 9)) }
}

extension MemoryDevice {
    /// `count` bytes at byte `offset`.
    func bytes(at offset: Int, count: Int) -> [UInt8] { (0..<count).map { byte(at: offset + $0) } }
}

/// Runs one bio to completion and returns its status.
@discardableResult
func runBio(_ op: BioOp, on device: BlockDevice, sector: UInt64 = 0, buffer: TestBuffer? = nil, sectors: UInt64? = nil,
         flags: BioFlags = []) -> BioStatus {
    let count = sectors ?? UInt64(buffer?.sectors ?? 0)
    return BioWaiter().run(Bio(op: op, sector: sector, sectors: count, buffer: buffer?.pointer, flags: flags), on: device)
}
