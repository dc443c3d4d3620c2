/// Anything that accepts bios: an image file, a block device, or another mapped device.
public protocol BlockDevice: AnyObject, Sendable {
    /// What the device was opened as (a path, or the exposed file of a mapped device).
    var name: String { get }
    /// Size in 512-byte sectors.
    var sectors: UInt64 { get }
    /// Whether discarded sectors are guaranteed to read back as zeros.
    var discardZeroes: Bool { get }
    /// Start the bio. Called only from a `BioList` submission loop; the device ends the bio
    /// (now or later, on any thread) and may submit further bios, which queue behind this call.
    func submitBio(_ bio: Bio)
}

public let sectorSize = 512
public let sectorShift: UInt64 = 9
