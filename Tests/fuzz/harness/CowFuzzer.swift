import UDMCore
import UDMExceptionStore

/// libFuzzer entry for the persistent snapshot store's reader: the first input byte picks the
/// table's chunk size (0 = the header's, else 2^(byte % 8) sectors); the rest is the COW device,
/// zero-padded to whole sectors. PersistentStore.read must accept it or refuse it with one
/// line, and every exception it reports must point at a data chunk inside the device. An
/// accepted, valid store then takes one more exception and commits it.
/// Found: `lastExceptions` moves the store back to its last full area, so a `commit` after it
/// writes one record past the area buffer (heap overflow); not reachable from the daemon today.
@_cdecl("LLVMFuzzerTestOneInput")
public func cowFuzzerInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size >= 1 else { return 0 }
    let chunkSize: UInt64 = data[0] == 0 ? 0 : 1 << UInt64(data[0] % 8)
    let cow = FuzzDevice(name: "/cow", bytes: UnsafeRawBufferPointer(start: data + 1, count: size - 1))
    let store = PersistentStore(cow: cow, chunkSize: chunkSize)
    var exceptions = 0
    let valid: Bool
    do {
        valid = try store.read { old, new in
            precondition(new >= 2 && (new + 1) * store.chunkSize <= cow.sectors, "exception \(old) -> \(new) outside the device")
            exceptions += 1
        }
    } catch {
        let message = "\(error)"
        precondition(!message.isEmpty && !message.contains("\n"), "an error that is not one line: \(message)")
        return 0
    }
    // (usage.allocated can exceed usage.total by a chunk when the last data chunk is in use and
    // the next one would be a metadata area: the kernel's status has the same quirk.)
    _ = store.usage
    if valid, let chunk = store.prepare() {
        precondition(chunk >= 2 && (chunk + 1) * store.chunkSize <= cow.sectors, "prepared chunk \(chunk) outside the device")
        let done = Completion()
        store.commit(old: 7, new: chunk) { _ in done.signal() }
        done.wait()
    }
    // Last: it steps back to the last full area, after which a commit would write past the
    // area buffer (only a merging store calls it, and a merging store takes no new exceptions).
    _ = store.lastExceptions(limit: 4)
    return 0
}
