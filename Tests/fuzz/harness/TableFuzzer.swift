import Glibc
import Synchronization
import UDMCore
import UDMTargets

/// libFuzzer entry for the table parser and every target constructor: the input is table text
/// (TableLine.parse, then Table with the built-in targets over in-memory devices /d0 (2^40
/// sectors of zeros), /d1 and /cow (1 MiB each)). A table that builds is made live on a device
/// and gets a read, a write, a flush and a discard at its first and last sectors; then the device
/// is suspended, which must end every bio exactly once (delayed ones included).
/// Found: a stripe count near 2^63 overflowed `2 + 2 * count` in StripedTarget and crashed
/// the daemon (fixed; Tests/fuzz/table/striped-huge-count); a snapshot target whose last
/// reference went while an origin walked its snapshots ran its deinit under the origin lock
/// and locked it again: a self-deadlock (fixed in OriginRegistry/SnapshotTarget).

/// One set of devices and services for all inputs: snapshot origins and the copy engine live in
/// the services, so fresh ones per input would pile up threads.
private let services = TargetServices()
private let devices: [String: FuzzDevice] = [
    "/d0": FuzzDevice(name: "/d0", sectors: 1 << 40, backed: false),
    "/d1": FuzzDevice(name: "/d1", sectors: 2048, backed: true),
    "/cow": FuzzDevice(name: "/cow", sectors: 2048, backed: true),
]

private struct Resolver: DeviceResolver {
    func open(_ name: String) throws -> BlockDevice {
        guard let device = devices[name] else { throw TargetError("no such device") }
        return device
    }
}

/// Counts ends; a second end of the same bio is a bug.
private final class Ends: BioCompletion, @unchecked Sendable {
    let count = Atomic<Int>(0)
    let seen = Mutex<Set<ObjectIdentifier>>([])
    func bioCompleted(_ bio: Bio) {
        let first = seen.withLock { $0.insert(ObjectIdentifier(bio)).inserted }
        precondition(first, "a bio completed twice")
        count.add(1, ordering: .sequentiallyConsistent)
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func tableFuzzerInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    devices.values.forEach { $0.reset() }
    let table: Table
    do {
        table = try Table(lines: TableLine.parse(text), registry: BuiltinTargets.registry, resolver: Resolver(),
                          bioSetSize: 16, services: services)  // room for all 8 bios held at once (delay)
    } catch {
        let message = "\(error)"
        precondition(!message.isEmpty && !message.contains("\n"), "an error that is not one line: \(message)")
        return 0
    }
    // A table prints back; what it prints parses again.
    for line in table.lines(.table) { _ = try? TableLine.parse(line) }
    _ = table.lines(.info)

    let device = MappedDevice(name: "fuzz")
    device.load(table)
    do { try device.resume() } catch { preconditionFailure("a built table did not resume: \(error)") }
    let buffer = UnsafeMutableRawPointer.allocate(byteCount: 8 * 512, alignment: 4096)
    defer { buffer.deallocate() }
    buffer.initializeMemory(as: UInt8.self, repeating: 0x5A, count: 8 * 512)
    let ends = Ends()
    var bios: [Bio] = []
    for sector in Set([0, table.sectors - 1]) {
        let count = min(8, table.sectors - sector)
        bios += [Bio(op: .read, sector: sector, sectors: count, buffer: buffer),
                 Bio(op: .write, sector: sector, sectors: count, buffer: buffer, flags: .fua),
                 Bio(op: .flush),
                 Bio(op: .discard, sector: sector, sectors: count)]
    }
    for bio in bios {
        bio.completion = ends
        bio.submit(to: device)
    }
    device.suspend()
    // A bio leaves the in-flight count just before its completion runs (as in dm), so the
    // last ones may still be ending on another thread when suspend returns.
    let deadline = monotonicNanoseconds() + 10_000_000_000
    while ends.count.load(ordering: .sequentiallyConsistent) < bios.count && monotonicNanoseconds() < deadline {
        sched_yield()
    }
    precondition(ends.count.load(ordering: .sequentiallyConsistent) == bios.count,
                 "\(bios.count - ends.count.load(ordering: .sequentiallyConsistent)) bios never ended")
    return 0
}
