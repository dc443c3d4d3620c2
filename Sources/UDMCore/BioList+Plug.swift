/// The plug (dm/block layer: blk_plug and its merging): reads and writes for devices that can
/// do several at once wait here, and when the thread's list runs dry — or before the thread
/// could block waiting for a clone — they are handed over in runs of adjacent bios.
///
/// A held bio is in flight and its clone is taken, so a thread must not wait for anything
/// while it holds bios on its plug: the bioset unplugs before it waits, and nothing else in
/// the I/O path waits while it is inside a submission loop.
extension BioList {
    func plug(_ bio: Bio) {
        if let tail = pluggedTail {
            tail.next = bio
        } else {
            pluggedHead = bio
        }
        pluggedTail = bio
    }

    /// Starts everything on this thread's plug (before a wait that plugged bios could hold up).
    static func unplugCurrent() {
        let list = current
        if list.pluggedHead != nil { list.unplug() }
    }

    /// Hands the held bios over in runs. A run starts at the oldest held bio and takes every
    /// later one that continues it on the same device with the same operation and flags
    /// (sequential pieces and stripes arrive in order, so one forward scan finds them).
    func unplug() {
        guard !unplugging else { return }
        unplugging = true
        defer { unplugging = false }
        while let first = pluggedHead {
            pluggedHead = first.next
            if pluggedHead == nil { pluggedTail = nil }
            first.next = nil
            let device = first.device!
            let limit = device.maxRunBytes
            let flags = first.flags.subtracting(.preflush)
            var last = first
            var count = 1
            var bytes = first.byteCount
            var end = first.sector + first.sectors
            var previous: Bio?
            var candidate = pluggedHead
            while let bio = candidate, count < BioRun.maxCount, bytes < limit {
                candidate = bio.next
                guard bio.device === device, bio.op == first.op, bio.flags == flags,
                      bio.sector == end, bytes + bio.byteCount <= limit else {
                    previous = bio
                    continue
                }
                if let previous { previous.next = bio.next } else { pluggedHead = bio.next }
                if pluggedTail === bio { pluggedTail = previous }
                bio.next = nil
                last.next = bio
                last = bio
                count += 1
                bytes += bio.byteCount
                end += bio.sectors
            }
            device.submitRun(BioRun(first: first, count: count, bytes: bytes))
        }
    }
}
