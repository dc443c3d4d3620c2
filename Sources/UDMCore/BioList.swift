/// The per-thread submission list (dm: `current->bio_list` in submit_bio_noacct).
///
/// The first `submit` on a thread becomes the submission loop; a bio submitted while another
/// is being handled on the same thread (a clone remapped onto a lower device, the remainder of
/// a split) is queued instead of handled recursively. After each handled bio, the bios it
/// produced run before anything queued earlier, in the order they were produced: lower devices
/// first, then the remainder — depth-first, so stack depth stays constant however deep the
/// devices are stacked and however often a bio is split.
///
/// Reads and writes bound for a device with a `maxRunBytes` wait on the thread's plug
/// (BioList+Plug) until the list runs dry, so the pieces of a split bio that are adjacent on
/// the device start as one I/O.
public final class BioList {
    private var queueHead: Bio?
    private var producedHead: Bio?
    private var producedTail: Bio?
    private var active = false
    /// Set by `Bio.acceptPartial` during a target's map.
    var acceptedSectors: UInt64 = 0

    // The plug: bios held back, in the order they reached it.
    var pluggedHead: Bio?
    var pluggedTail: Bio?
    var unplugging = false

    /// Submits `bio` to `bio.device`.
    public static func submit(_ bio: Bio) {
        current.enqueueOrRun(bio)
    }

    private func enqueueOrRun(_ bio: Bio) {
        precondition(bio.device != nil, "bio submitted without a device")
        bio.next = nil
        if let tail = producedTail {
            tail.next = bio
        } else {
            producedHead = bio
        }
        producedTail = bio
        guard !active else { return }
        active = true
        defer { active = false }
        while true {
            // What the last bio produced goes in front of what was queued before it.
            if let head = producedHead {
                producedTail!.next = queueHead
                queueHead = head
                producedHead = nil
                producedTail = nil
            }
            guard let bio = queueHead else {
                guard pluggedHead != nil else { return }
                unplug()
                continue
            }
            queueHead = bio.next
            bio.next = nil
            let device = bio.device!
            if bio.op.carriesData && bio.byteCount < device.maxRunBytes {
                plug(bio)
            } else {
                device.submitBio(bio)
            }
        }
    }

    private static let local = ThreadLocal { BioList() }

    /// This thread's list, made on first use.
    static var current: BioList { local.value }
}
