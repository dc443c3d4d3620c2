import UDMCore

/// A block device for the fuzzers: `bytes` of memory, or (with no bytes) a large device that
/// reads zeros and drops writes. `reset` puts the memory back to zeros between inputs.
final class FuzzDevice: BlockDevice, @unchecked Sendable {
    let name: String
    let sectors: UInt64
    var discardZeroes: Bool { true }
    private let memory: UnsafeMutableRawPointer?

    init(name: String, sectors: UInt64, backed: Bool) {
        self.name = name
        self.sectors = sectors
        memory = backed ? .allocate(byteCount: Int(sectors) << 9, alignment: 4096) : nil
        reset()
    }

    /// A memory device holding `bytes`, zero-padded to whole sectors.
    convenience init(name: String, bytes: UnsafeRawBufferPointer) {
        self.init(name: name, sectors: UInt64((bytes.count + 511) / 512), backed: true)
        if let base = bytes.baseAddress { memory!.copyMemory(from: base, byteCount: bytes.count) }
    }

    deinit { memory?.deallocate() }

    func reset() {
        memory?.initializeMemory(as: UInt8.self, repeating: 0, count: Int(sectors) << 9)
    }

    func submitBio(_ bio: Bio) {
        guard bio.sector <= sectors, bio.sectors <= sectors - bio.sector else {
            bio.end(.ioError)
            return
        }
        let offset = Int(bio.sector) << 9
        switch bio.op {
        case .read:
            if let memory { bio.buffer!.copyMemory(from: memory + offset, byteCount: bio.byteCount) }
            else { bio.buffer!.initializeMemory(as: UInt8.self, repeating: 0, count: bio.byteCount) }
        case .write:
            if let memory { (memory + offset).copyMemory(from: bio.buffer!, byteCount: bio.byteCount) }
        case .discard, .writeZeroes:
            if let memory { (memory + offset).initializeMemory(as: UInt8.self, repeating: 0, count: bio.byteCount) }
        case .flush:
            break
        }
        bio.end(.ok)
    }
}
