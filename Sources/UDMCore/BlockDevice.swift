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
    /// The most bytes of adjacent reads or writes the device starts in one `submitRun`; 0
    /// (the default) if it takes bios one by one and they should not be held on the plug.
    var maxRunBytes: Int { get }
    /// Start a run of adjacent bios gathered by the plug, as one I/O where the device can.
    func submitRun(_ run: BioRun)
}

extension BlockDevice {
    public var maxRunBytes: Int { 0 }

    public func submitRun(_ run: BioRun) {
        for bio in run { submitBio(bio) }
    }
}

public let sectorSize = 512
public let sectorShift: UInt64 = 9
