import UDMCore

/// The Linux kernel's persistent snapshot store (dm-snap-persistent.c), byte for byte.
///
/// Layout, in chunks of `chunkSize` sectors, all integers little-endian:
/// - Chunk 0 is the header: u32 magic 0x70416e53 ("SnAp") at byte 0, u32 valid (1 or 0) at 4,
///   u32 version (1) at 8, u32 chunk size in sectors at 12; the rest of the chunk is zero.
/// - Metadata areas follow, each one chunk of 16-byte records {u64 old chunk, u64 new chunk},
///   E = chunk bytes / 16 records per area. Area i sits at chunk 1 + i·(E+1) and is followed by
///   the E data chunks it describes, so chunk 1 is area 0 and data starts at chunk 2.
/// - Records are in commit order; the first record whose new chunk is 0 ends the table (chunk 0
///   is the header, never data). A full area means the table continues in the next one.
/// A COW device whose first four bytes are zero is a new store: the header is written and
/// area 0 zeroed. Any other magic, a version other than 1, or a bad chunk size is refused and
/// the device left untouched. valid = 0 loads as an invalid snapshot.
///
/// Commits are grouped: a record goes into the in-memory area at once, and the area is
/// written (with a preflush, so the copied data is durable first, and FUA) when no prepared
/// exception is still outstanding or the area is full; a full area is preceded by writing a
/// zeroed next area, so the end marker is always on disk.
public final class PersistentStore: MergeableStore, @unchecked Sendable {
    public static let magic: UInt32 = 0x7041_6E53
    public static let version: UInt32 = 1
    public static let defaultChunkSize: UInt64 = 32
    public static let maxChunkSize: UInt64 = 1 << 21

    private let cow: BlockDevice
    private let tableChunkSize: UInt64
    public private(set) var chunkSize: UInt64
    private let lock = ConditionLock()
    private var recordsPerArea = 0
    private var area: UnsafeMutableRawPointer?
    private var currentArea: UInt64 = 0
    private var recordsInArea = 0
    private var nextFree: UInt64 = 2
    private var outstanding = 0
    private var waiting: [@Sendable (Bool) -> Void] = []
    private var valid = true

    /// `chunkSize` 0 takes the header's, or 32 sectors for a new store; a header's chunk size
    /// always wins over the table's (as in dm).
    public init(cow: BlockDevice, chunkSize: UInt64) {
        self.cow = cow
        self.tableChunkSize = chunkSize
        self.chunkSize = chunkSize == 0 ? Self.defaultChunkSize : chunkSize
    }

    deinit { area?.deallocate() }

    private var chunkBytes: Int { Int(chunkSize) << 9 }

    /// The chunk holding metadata area `index`.
    private func areaChunk(_ index: UInt64) -> UInt64 { 1 + index * UInt64(recordsPerArea + 1) }

    public func read(_ found: (UInt64, UInt64) -> Void) throws(StoreError) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        do {
            let header = UnsafeMutableRawPointer.allocate(byteCount: 512, alignment: 4096)
            defer { header.deallocate() }
            guard cow.sectors >= 1, StoreIO.run(.read, cow, sector: 0, sectors: 1, buffer: header).isOK else {
                throw StoreError("COW device \(cow.name): cannot read the header")
            }
            let magic = UInt32(littleEndian: header.loadUnaligned(fromByteOffset: 0, as: UInt32.self))
            if magic == 0 {
                try create()
                return true
            }
            guard magic == Self.magic else {
                throw StoreError("COW device \(cow.name): bad magic 0x\(String(magic, radix: 16)), not a snapshot store")
            }
            let version = UInt32(littleEndian: header.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
            guard version == Self.version else {
                throw StoreError("COW device \(cow.name): unsupported store version \(version)")
            }
            let stored = UInt64(UInt32(littleEndian: header.loadUnaligned(fromByteOffset: 12, as: UInt32.self)))
            guard stored > 0, stored & (stored - 1) == 0, stored <= Self.maxChunkSize else {
                throw StoreError("COW device \(cow.name): bad chunk size \(stored) in the header")
            }
            chunkSize = stored
            try setUp()
            let isValid = UInt32(littleEndian: header.loadUnaligned(fromByteOffset: 4, as: UInt32.self)) != 0
            valid = isValid
            guard isValid else { return false }
            try readAreas(found)
            return true
        }
    }

    /// Sizes the area buffer for the chunk size and checks the device holds header and area 0.
    private func setUp() throws(StoreError) {
        guard cow.sectors >= 3 * chunkSize else {
            throw StoreError("COW device \(cow.name) is too small: \(cow.sectors) sectors, a store with chunk size \(chunkSize) needs at least \(3 * chunkSize)")
        }
        recordsPerArea = chunkBytes / 16
        area = UnsafeMutableRawPointer.allocate(byteCount: chunkBytes, alignment: 4096)
        area!.initializeMemory(as: UInt8.self, repeating: 0, count: chunkBytes)
    }

    /// A new store: zero area 0, then write the header (valid, version 1, chunk size).
    private func create() throws(StoreError) {
        chunkSize = tableChunkSize == 0 ? Self.defaultChunkSize : tableChunkSize
        try setUp()
        guard writeArea(0, flags: [.fua]) else {
            throw StoreError("COW device \(cow.name): cannot write metadata area 0")
        }
        guard writeHeader(valid: true) else {
            throw StoreError("COW device \(cow.name): cannot write the header")
        }
    }

    private func readAreas(_ found: (UInt64, UInt64) -> Void) throws(StoreError) {
        let chunks = cow.sectors / chunkSize
        var maxNew: UInt64 = 1
        var index: UInt64 = 0
        while true {
            let chunk = areaChunk(index)
            guard chunk < chunks else {
                if index == 0 { throw StoreError("COW device \(cow.name): truncated before metadata area 0") }
                break // the previous area was full and filled the device
            }
            guard StoreIO.run(.read, cow, sector: chunk * chunkSize, sectors: chunkSize, buffer: area).isOK else {
                throw StoreError("COW device \(cow.name): cannot read metadata area \(index)")
            }
            var count = 0
            while count < recordsPerArea {
                let old = UInt64(littleEndian: area!.loadUnaligned(fromByteOffset: count * 16, as: UInt64.self))
                let new = UInt64(littleEndian: area!.loadUnaligned(fromByteOffset: count * 16 + 8, as: UInt64.self))
                if new == 0 { break }
                guard new < chunks, new >= 2, new % UInt64(recordsPerArea + 1) != 1 else {
                    throw StoreError("COW device \(cow.name): metadata area \(index) record \(count) points at chunk \(new), which is not a data chunk of the device")
                }
                found(old, new)
                maxNew = max(maxNew, new)
                count += 1
            }
            currentArea = index
            recordsInArea = count
            if count < recordsPerArea { break }
            index += 1
        }
        if recordsInArea == recordsPerArea {
            // Every area up to the device's end is full: nothing more can be recorded.
            currentArea += 1
            recordsInArea = 0
            area!.initializeMemory(as: UInt8.self, repeating: 0, count: chunkBytes)
        }
        nextFree = max(maxNew + 1, 2)
        skipMetadata()
    }

    private func skipMetadata() {
        if nextFree % UInt64(recordsPerArea + 1) == 1 { nextFree += 1 }
    }

    public func prepare() -> UInt64? {
        lock.withLock {
            guard valid, (nextFree + 1) * chunkSize <= cow.sectors else { return nil }
            let chunk = nextFree
            nextFree += 1
            skipMetadata()
            outstanding += 1
            return chunk
        }
    }

    public func commit(old: UInt64, new: UInt64, done: @escaping @Sendable (Bool) -> Void) {
        let finished: [@Sendable (Bool) -> Void]
        let success: Bool
        lock.lock()
        outstanding -= 1
        guard valid else {
            lock.unlock()
            done(false)
            return
        }
        area!.storeBytes(of: old.littleEndian, toByteOffset: recordsInArea * 16, as: UInt64.self)
        area!.storeBytes(of: new.littleEndian, toByteOffset: recordsInArea * 16 + 8, as: UInt64.self)
        recordsInArea += 1
        waiting.append(done)
        (finished, success) = writeIfIdle()
        lock.unlock()
        finished.forEach { $0(success) }
    }

    public func abandon(_ new: UInt64) {
        lock.lock()
        outstanding -= 1
        let (finished, success) = writeIfIdle()
        lock.unlock()
        finished.forEach { $0(success) }
    }

    /// With the lock held: writes the area when nothing prepared is outstanding or it is full;
    /// returns the callbacks that the write made durable.
    private func writeIfIdle() -> ([@Sendable (Bool) -> Void], Bool) {
        guard !waiting.isEmpty, outstanding == 0 || recordsInArea == recordsPerArea else { return ([], true) }
        let full = recordsInArea == recordsPerArea
        var ok = true
        if full, areaChunk(currentArea + 1) < cow.sectors / chunkSize {
            ok = zeroArea(currentArea + 1)
        }
        // The preflush makes the copied data durable before the records that point at it.
        ok = ok && writeArea(currentArea, flags: [.preflush, .fua])
        if full {
            currentArea += 1
            recordsInArea = 0
            area!.initializeMemory(as: UInt8.self, repeating: 0, count: chunkBytes)
        }
        if !ok { valid = false }
        let finished = waiting
        waiting = []
        return (finished, ok)
    }

    private func writeArea(_ index: UInt64, flags: BioFlags) -> Bool {
        StoreIO.run(.write, cow, sector: areaChunk(index) * chunkSize, sectors: chunkSize, buffer: area, flags: flags).isOK
    }

    private func zeroArea(_ index: UInt64) -> Bool {
        let zeros = UnsafeMutableRawPointer.allocate(byteCount: chunkBytes, alignment: 4096)
        defer { zeros.deallocate() }
        zeros.initializeMemory(as: UInt8.self, repeating: 0, count: chunkBytes)
        return StoreIO.run(.write, cow, sector: areaChunk(index) * chunkSize, sectors: chunkSize, buffer: zeros).isOK
    }

    private func writeHeader(valid: Bool) -> Bool {
        let header = UnsafeMutableRawPointer.allocate(byteCount: 512, alignment: 4096)
        defer { header.deallocate() }
        header.initializeMemory(as: UInt8.self, repeating: 0, count: 512)
        header.storeBytes(of: Self.magic.littleEndian, toByteOffset: 0, as: UInt32.self)
        header.storeBytes(of: UInt32(valid ? 1 : 0).littleEndian, toByteOffset: 4, as: UInt32.self)
        header.storeBytes(of: Self.version.littleEndian, toByteOffset: 8, as: UInt32.self)
        header.storeBytes(of: UInt32(chunkSize).littleEndian, toByteOffset: 12, as: UInt32.self)
        return StoreIO.run(.write, cow, sector: 0, sectors: 1, buffer: header, flags: [.fua]).isOK
    }

    /// Marks the store invalid on disk; commits still waiting for a metadata write fail.
    public func invalidate() {
        lock.lock()
        valid = false
        _ = writeHeader(valid: false)
        let failed = waiting
        waiting = []
        lock.unlock()
        failed.forEach { $0(false) }
    }

    // MARK: merging

    private func record(_ index: Int) -> (old: UInt64, new: UInt64) {
        (UInt64(littleEndian: area!.loadUnaligned(fromByteOffset: index * 16, as: UInt64.self)),
         UInt64(littleEndian: area!.loadUnaligned(fromByteOffset: index * 16 + 8, as: UInt64.self)))
    }

    /// With the lock held: when the current area is empty, makes the previous (full) area
    /// current, so the last committed record is at `recordsInArea - 1`.
    private func stepBackToLastRecord() -> Bool {
        guard recordsInArea == 0 && currentArea > 0 else { return true }
        currentArea -= 1
        guard StoreIO.run(.read, cow, sector: areaChunk(currentArea) * chunkSize, sectors: chunkSize, buffer: area).isOK else {
            valid = false
            return false
        }
        recordsInArea = recordsPerArea
        return true
    }

    public func lastExceptions(limit: Int) -> [(old: UInt64, new: UInt64)] {
        lock.withLock {
            guard valid, stepBackToLastRecord(), recordsInArea > 0 else { return [] }
            var result = [record(recordsInArea - 1)]
            var index = recordsInArea - 2
            while index >= 0, result.count < limit {
                let next = record(index)
                let last = result[result.count - 1]
                // Compared without overflow: a corrupt record's old chunk may be 2^64-1.
                guard last.old > 0, last.new > 0, next.old == last.old - 1, next.new == last.new - 1 else { break }
                result.append(next)
                index -= 1
            }
            return result
        }
    }

    public func commitMerge(_ count: Int) throws(StoreError) {
        lock.lock()
        defer { lock.unlock() }
        precondition(count <= recordsInArea, "merging more exceptions than the area holds")
        (area! + (recordsInArea - count) * 16).initializeMemory(as: UInt8.self, repeating: 0, count: count * 16)
        recordsInArea -= count
        guard writeArea(currentArea, flags: [.preflush, .fua]) else {
            valid = false
            throw StoreError("COW device \(cow.name): cannot write metadata area \(currentArea)")
        }
        guard stepBackToLastRecord() else {
            throw StoreError("COW device \(cow.name): cannot read metadata area \(currentArea)")
        }
        // Chunks are handed out in order within an area, so what is left ends here.
        nextFree = areaChunk(currentArea) + UInt64(recordsInArea) + 1
    }

    public var usage: (allocated: UInt64, total: UInt64, metadata: UInt64) {
        lock.withLock { (nextFree * chunkSize, cow.sectors, (currentArea + 2) * chunkSize) }
    }
}
