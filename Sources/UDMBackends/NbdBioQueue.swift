import UDMCore

/// A FIFO of bios waiting for a connection's poll thread: a ring that grows by doubling
/// (rarely: it starts with room for a disk's whole queue depth), so queueing a bio does not
/// allocate.
struct NbdBioQueue {
    private var slots: [Bio?]
    private var head = 0
    private(set) var count = 0

    init(capacity: Int) {
        slots = Array(repeating: nil, count: max(capacity, 1))
    }

    var isEmpty: Bool { count == 0 }

    mutating func append(_ bio: Bio) {
        if count == slots.count {
            let old = slots
            slots = Array(repeating: nil, count: old.count * 2)
            for index in 0..<count { slots[index] = old[(head + index) % old.count] }
            head = 0
        }
        slots[(head + count) % slots.count] = bio
        count += 1
    }

    mutating func popFirst() -> Bio? {
        guard count > 0 else { return nil }
        let bio = slots[head]
        slots[head] = nil
        head = (head + 1) % slots.count
        count -= 1
        return bio
    }
}
