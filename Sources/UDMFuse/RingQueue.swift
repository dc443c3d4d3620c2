import CFuse3
internal import CUring
import UDMCore
import Glibc
import Synchronization

/// One io_uring of FUSE ring entries for one kernel queue (qid = a CPU number), served by its
/// own thread. Each entry is a header page and a payload buffer of the negotiated maximum
/// size, page-aligned, registered once; the kernel places a request in an entry and completes
/// its command, the thread hands the request to libfuse's dispatcher, and the reply, written
/// into the same entry on whichever thread answers, goes back with COMMIT_AND_FETCH, which
/// also re-arms the entry. A request the disk holds holds its entry, not this thread.
///
/// Replies from other threads reach the ring thread through a lock-free stack of finished
/// entries; an eventfd read kept posted on the ring wakes the thread when it is waiting.
///
/// The ring also carries the disks' image-file transfers for the requests it dispatches
/// (`AsyncTransferEngine`): the thread never waits for a disk, so one thread per CPU serves
/// every request of that CPU at once. Only requests with an entry's payload (`lendPayload`) or
/// a small pool buffer use it, and the transport keeps the entries of all rings within the
/// request pool, so the one wait left on this thread (`RequestPool.take`) can never be for
/// something only this thread would free.
final class RingQueue: AsyncTransferEngine, @unchecked Sendable {
    /// The header page holds the kernel's header (288 bytes) at its start and, at its end, the
    /// request rebuilt for libfuse (in-header and op header), contiguous with the payload.
    static let headerBytes = 4096
    private static let inHeaderBytes = MemoryLayout<fuse_in_header>.size
    private static let outHeaderBytes = MemoryLayout<fuse_out_header>.size
    private static let opHeaderOffset = Int(UDM_FUSE_URING_IN_OUT_HEADER_SZ)
    private static let entryFieldsOffset = opHeaderOffset + Int(UDM_FUSE_URING_OP_IN_OUT_SZ)
    private static let eventTag = UInt64.max
    /// user_data of a transfer: this bit and the slot.
    private static let transferTag: UInt64 = 1 << 62

    /// The ring of the thread running this, if it is a ring thread.
    private final class Current {
        var ring: RingQueue?
    }
    private static let current = ThreadLocal { Current() }
    static var ofThisThread: RingQueue? { current.value.ring }

    let qid: UInt16
    /// This ring's place in the transport (part of the tags that route replies here).
    let index: Int
    let entryCount: Int
    let payloadBytes: Int
    private let stride: Int
    private let fuseFD: Int32
    private let session: OpaquePointer
    private let region: UnsafeMutableRawPointer
    private let regionBytes: Int
    private let iovecs: UnsafeMutablePointer<iovec>
    /// Per entry: the unique of the request it carries (the kernel's, for the commit).
    private let commitIDs: UnsafeMutablePointer<UInt64>
    /// Per entry: the next entry down the finished stack (index + 1; 0 ends it).
    private let links: UnsafeMutablePointer<Int>
    /// Top of the finished stack (index + 1; 0 when empty). Pushed by any thread, taken whole
    /// by the ring thread only, so no ABA.
    private let finished = Atomic<Int>(0)
    private let sleeping = Atomic<Bool>(false)
    private let leave = Atomic<Bool>(false)
    private let stopped = Atomic<Bool>(false)
    private let eventFD: Int32
    private let eventValue = UnsafeMutablePointer<UInt64>.allocate(capacity: 1)
    private var thread: pthread_t?
    /// Owned by the ring thread.
    private var ring = io_uring()
    /// Transfers in flight: their bio and owner by slot, and the free slots (ring thread only).
    private let transferCapacity: Int
    private let transferBios: UnsafeMutablePointer<Unmanaged<Bio>?>
    private let transferOwners: UnsafeMutablePointer<Unmanaged<AnyObject>?>
    private var freeTransfers: [Int32]
    /// The payload of the entry being dispatched, until a request borrows it.
    private var lendablePayload: UnsafeMutableRawPointer?
    /// Per entry: its command has ended with an error, so it is not committed again.
    private var ended: [Bool]
    /// Per entry, the payload bytes requests and replies have used since its pages were last
    /// given back, and how many entries hold at least `largePayload` (ring thread only).
    private var residentPayload: [Int]
    private var largeEntries = 0
    /// A burst of held large writes fills many entries' payloads; beyond these many, an entry
    /// gives back its payload's pages past a small reply when it is answered.
    static let warmLargeEntries = 32
    static let largePayload = 128 << 10
    /// Set by the ring thread once registration has been submitted: nil if it succeeded.
    private let registration = Mutex<(done: Bool, error: String?)>((false, nil))

    init(qid: UInt16, index: Int, entries: Int, payloadBytes: Int, fuseFD: Int32, session: OpaquePointer) throws {
        self.qid = qid
        self.index = index
        entryCount = entries
        self.payloadBytes = (payloadBytes + 4095) & ~4095
        stride = Self.headerBytes + self.payloadBytes
        self.fuseFD = fuseFD
        self.session = session
        regionBytes = entries * stride
        // Reserved, not committed: only pages a request has used become resident.
        guard let mapping = mmap(nil, regionBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0),
              mapping != MAP_FAILED else {
            throw FuseError("cannot reserve \(regionBytes >> 20) MiB for the FUSE ring entries: \(String(cString: strerror(errno)))")
        }
        region = mapping
        eventFD = eventfd(0, Int32(EFD_CLOEXEC))
        guard eventFD >= 0 else {
            munmap(mapping, regionBytes)
            throw FuseError("cannot create an eventfd for the FUSE ring: \(String(cString: strerror(errno)))")
        }
        iovecs = .allocate(capacity: 2 * entries)
        commitIDs = .allocate(capacity: entries)
        commitIDs.initialize(repeating: 0, count: entries)
        links = .allocate(capacity: entries)
        links.initialize(repeating: 0, count: entries)
        // A request's bio may be split across a few images (striped): room for that.
        transferCapacity = 4 * entries
        transferBios = .allocate(capacity: transferCapacity)
        transferBios.initialize(repeating: nil, count: transferCapacity)
        transferOwners = .allocate(capacity: transferCapacity)
        transferOwners.initialize(repeating: nil, count: transferCapacity)
        freeTransfers = Array((0..<Int32(transferCapacity)).reversed())
        ended = Array(repeating: false, count: entries)
        residentPayload = Array(repeating: 0, count: entries)
        for entry in 0..<entries {
            iovecs[2 * entry] = iovec(iov_base: header(entry), iov_len: MemoryLayout<udm_fuse_uring_req_header>.size)
            iovecs[2 * entry + 1] = iovec(iov_base: payload(entry), iov_len: self.payloadBytes)
        }
    }

    deinit {
        munmap(region, regionBytes)
        close(eventFD)
        iovecs.deallocate()
        commitIDs.deallocate()
        links.deallocate()
        eventValue.deallocate()
        transferBios.deallocate()
        transferOwners.deallocate()
    }

    /// The tag a request of `entry` carries through libfuse instead of its unique: the top bit
    /// (never set in a kernel unique), this ring's index, the entry.
    static let tagBit: UInt64 = 1 << 63
    private func tag(_ entry: Int) -> UInt64 { Self.tagBit | UInt64(index) << 32 | UInt64(entry) }
    static func route(_ tag: UInt64) -> (ring: Int, entry: Int) { (Int((tag >> 32) & 0x7fff_ffff), Int(tag & 0xffff_ffff)) }

    private func header(_ entry: Int) -> UnsafeMutableRawPointer { region + entry * stride }
    private func payload(_ entry: Int) -> UnsafeMutableRawPointer { region + entry * stride + Self.headerBytes }

    /// Starts the thread, which registers every entry; returns once the kernel took them, or
    /// the reason it did not.
    func start() -> String? {
        var thread = pthread_t()
        let context = Unmanaged.passRetained(self).toOpaque()
        pthread_create(&thread, nil, { context in
            let queue = Unmanaged<RingQueue>.fromOpaque(context!).takeRetainedValue()
            queue.run()
            return nil
        }, context)
        self.thread = thread
        while true {
            let state = registration.withLock { $0 }
            if state.done { return state.error }
            usleep(1000)
        }
    }

    /// Waits up to `seconds` for the thread to end by itself (the kernel ends every entry's
    /// command when the connection goes), then makes it leave with entries still registered
    /// (closing the ring cancels their commands), and joins it.
    func stop(afterSeconds seconds: Int) {
        guard let thread else { return }
        for _ in 0..<(seconds * 100) where !stopped.load(ordering: .acquiring) {
            usleep(10_000)
        }
        leave.store(true, ordering: .sequentiallyConsistent)
        wake()
        pthread_join(thread, nil)
        self.thread = nil
    }

    // MARK: replies, on any thread

    /// libfuse's reply for `entry` (header then payload pieces): written into the entry, then
    /// handed to the ring thread to commit. Returns the bytes taken, as writev would.
    func reply(entry: Int, _ iov: UnsafeMutablePointer<iovec>, _ count: Int) -> Int {
        let header = self.header(entry)
        let payload = self.payload(entry)
        var used = 0
        var error = iov[0].iov_base.load(fromByteOffset: 4, as: Int32.self)
        for piece in 1..<max(count, 1) {
            let length = iov[piece].iov_len
            guard length > 0 else { continue }
            guard used + length <= payloadBytes else {
                error = -EIO
                used = 0
                break
            }
            let source = UnsafeRawPointer(iov[piece].iov_base!)
            if source != UnsafeRawPointer(payload + used) {
                (payload + used).copyMemory(from: source, byteCount: length)
            }
            used += length
        }
        var out = fuse_out_header(len: UInt32(Self.outHeaderBytes + used), error: error, unique: commitIDs[entry])
        header.copyMemory(from: &out, byteCount: Self.outHeaderBytes)
        header.storeBytes(of: UInt32(used), toByteOffset: Self.entryFieldsOffset + 16, as: UInt32.self)
        push(entry)
        return Self.outHeaderBytes + used
    }

    private func push(_ entry: Int) {
        var top = finished.load(ordering: .relaxed)
        while true {
            links[entry] = top
            let (exchanged, original) = finished.compareExchange(expected: top, desired: entry + 1, ordering: .sequentiallyConsistent)
            if exchanged { break }
            top = original
        }
        if sleeping.exchange(false, ordering: .sequentiallyConsistent) { wake() }
    }

    private func wake() {
        var one: UInt64 = 1
        _ = Glibc.write(eventFD, &one, 8)
    }

    // MARK: the ring thread

    private func run() {
        var params = io_uring_params()
        var sqEntries: UInt32 = 8
        while sqEntries < UInt32(entryCount + 1) { sqEntries <<= 1 }
        // Completions are reaped by this thread only, and task work (the kernel copying a
        // request into an entry) runs when it waits: no interrupting wake-ups.
        params.flags = UInt32(IORING_SETUP_SQE128) | UInt32(IORING_SETUP_SINGLE_ISSUER) | UInt32(IORING_SETUP_DEFER_TASKRUN)
        var result = io_uring_queue_init_params(sqEntries, &self.ring, &params)
        if result == -EINVAL {
            params = io_uring_params()
            params.flags = UInt32(IORING_SETUP_SQE128)
            result = io_uring_queue_init_params(sqEntries, &self.ring, &params)
        }
        guard result == 0 else {
            registration.withLock { $0 = (true, "cannot set up the io_uring of FUSE queue \(qid): \(String(cString: strerror(-result)))") }
            return
        }
        Self.current.value.ring = self
        defer {
            Self.current.value.ring = nil
            io_uring_queue_exit(&ring)
            stopped.store(true, ordering: .releasing)
        }
        postEventRead(&ring)
        for entry in 0..<entryCount {
            prepare(&ring) { sqe in
                udm_prep_fuse_uring_cmd(sqe, fuseFD, udm_fuse_io_uring_cmd_register, iovecs + 2 * entry, qid, 0, UInt64(entry))
            }
        }
        io_uring_submit(&ring)
        // A refused registration completes at once; accepted ones complete with requests.
        var cqes = [UnsafeMutablePointer<io_uring_cqe>?](repeating: nil, count: 64)
        var failure: String?
        let early = Int(io_uring_peek_batch_cqe(&ring, &cqes, UInt32(cqes.count)))
        for k in 0..<early {
            let cqe = cqes[k]!.pointee
            if cqe.user_data != Self.eventTag, cqe.res < 0, failure == nil {
                failure = "the kernel refused FUSE ring entries for queue \(qid): \(String(cString: strerror(-cqe.res)))"
            }
        }
        if let failure {
            io_uring_cq_advance(&ring, UInt32(early))
            registration.withLock { $0 = (true, failure) }
            return
        }
        registration.withLock { $0 = (true, nil) }
        var live = entryCount
        var first = true
        // Until every entry's command has ended and every transfer begun has ended too (its
        // request is answered, even if the answer can no longer be committed).
        while live > 0 || freeTransfers.count < transferCapacity, !leave.load(ordering: .sequentiallyConsistent) {
            var count = early
            if !first {
                commitFinished(&ring)
                sleeping.store(true, ordering: .sequentiallyConsistent)
                if finished.load(ordering: .sequentiallyConsistent) != 0 {
                    sleeping.store(false, ordering: .relaxed)
                    io_uring_submit(&ring)
                } else {
                    io_uring_submit_and_wait(&ring, 1)
                    sleeping.store(false, ordering: .relaxed)
                }
                count = Int(io_uring_peek_batch_cqe(&ring, &cqes, UInt32(cqes.count)))
            }
            first = false
            for k in 0..<count {
                let cqe = cqes[k]!.pointee
                if cqe.user_data == Self.eventTag {
                    postEventRead(&ring)
                } else if cqe.user_data & Self.transferTag != 0 {
                    transferEnded(slot: Int(cqe.user_data & ~Self.transferTag), result: Int(cqe.res))
                } else if cqe.res < 0 {
                    // The connection ended (ENOTCONN) or the ring is going (ECANCELED); a
                    // commit of an entry already ended ends the same way.
                    if !ended[Int(cqe.user_data)] {
                        ended[Int(cqe.user_data)] = true
                        live -= 1
                    }
                } else {
                    dispatch(Int(cqe.user_data))
                }
            }
            io_uring_cq_advance(&ring, UInt32(count))
        }
    }

    /// The payload of the entry whose request is being dispatched, for that request's data
    /// (once): it stays the request's until its reply is committed.
    func lendPayload() -> UnsafeMutableRawPointer? {
        defer { lendablePayload = nil }
        return lendablePayload
    }

    func startTransfer(write: Bool, fd: Int32, buffer: UnsafeMutableRawPointer, count: Int, offset: Int,
                       bio: Bio, owner: AsyncTransferOwner) -> Bool {
        guard let slot = freeTransfers.popLast() else { return false }
        transferBios[Int(slot)] = Unmanaged.passRetained(bio)
        transferOwners[Int(slot)] = Unmanaged.passRetained(owner as AnyObject)
        prepare(&ring) { sqe in
            if write {
                io_uring_prep_write(sqe, fd, buffer, UInt32(count), UInt64(offset))
            } else {
                io_uring_prep_read(sqe, fd, buffer, UInt32(count), UInt64(offset))
            }
            sqe.pointee.user_data = Self.transferTag | UInt64(slot)
        }
        return true
    }

    private func transferEnded(slot: Int, result: Int) {
        let bio = transferBios[slot]!.takeRetainedValue()
        let owner = transferOwners[slot]!.takeRetainedValue() as! AsyncTransferOwner
        transferBios[slot] = nil
        transferOwners[slot] = nil
        freeTransfers.append(Int32(slot))
        owner.transferEnded(bio, result: result)
    }

    private func postEventRead(_ ring: inout io_uring) {
        prepare(&ring) { sqe in udm_prep_eventfd_read(sqe, eventFD, eventValue, Self.eventTag) }
    }

    /// Fills the next SQE, submitting what is queued first when the submission ring is full.
    private func prepare(_ ring: inout io_uring, _ fill: (UnsafeMutablePointer<io_uring_sqe>) -> Void) {
        var sqe = io_uring_get_sqe(&ring)
        while sqe == nil {
            io_uring_submit(&ring)
            sqe = io_uring_get_sqe(&ring)
        }
        fill(sqe!)
    }

    private func commitFinished(_ ring: inout io_uring) {
        var top = finished.exchange(0, ordering: .sequentiallyConsistent)
        while top != 0 {
            let entry = top - 1
            top = links[entry]
            guard !ended[entry] else { continue }
            let replied = Int(header(entry).load(fromByteOffset: Self.entryFieldsOffset + 16, as: UInt32.self))
            if replied < Self.largePayload, largeEntries > Self.warmLargeEntries, residentPayload[entry] >= Self.largePayload {
                // The payload's pages past the reply (a write's is 8 bytes) can go.
                let kept = (replied + 4095) & ~4095
                _ = madvise(payload(entry) + kept, ((residentPayload[entry] + 4095) & ~4095) - kept, MADV_DONTNEED)
                residentPayload[entry] = kept
                largeEntries -= 1
            } else {
                noteResident(entry, bytes: replied)
            }
            prepare(&ring) { sqe in
                udm_prep_fuse_uring_cmd(sqe, fuseFD, udm_fuse_io_uring_cmd_commit_and_fetch, iovecs + 2 * entry, qid,
                                        commitIDs[entry], UInt64(entry))
            }
        }
    }

    /// A request arrived in `entry`: rebuilt as libfuse reads it from /dev/fuse (in-header, op
    /// header, payload, contiguous), with the entry's tag for unique, and dispatched. libfuse
    /// answers everything it does not know with ENOSYS, so no request is left unanswered.
    private func dispatch(_ entry: Int) {
        let header = self.header(entry)
        let payloadUsed = Int(header.load(fromByteOffset: Self.entryFieldsOffset + 16, as: UInt32.self))
        let length = Int(header.load(as: UInt32.self))
        let unique = header.load(fromByteOffset: 8, as: UInt64.self)
        commitIDs[entry] = unique
        let opBytes = length - Self.inHeaderBytes - payloadUsed
        guard (0...Int(UDM_FUSE_URING_OP_IN_OUT_SZ)).contains(opBytes), payloadUsed <= payloadBytes else {
            answer(entry, error: EIO)
            return
        }
        noteResident(entry, bytes: payloadUsed)
        let message = header + Self.headerBytes - Self.inHeaderBytes - opBytes
        message.copyMemory(from: header, byteCount: Self.inHeaderBytes)
        (message + Self.inHeaderBytes).copyMemory(from: header + Self.opHeaderOffset, byteCount: opBytes)
        message.storeBytes(of: tag(entry), toByteOffset: 8, as: UInt64.self)
        var buffer = fuse_buf()
        buffer.size = length
        buffer.mem = message
        buffer.fd = -1
        lendablePayload = payload(entry)
        fuse_session_process_buf(session, &buffer)
        lendablePayload = nil
    }

    private func noteResident(_ entry: Int, bytes: Int) {
        guard bytes > residentPayload[entry] else { return }
        if residentPayload[entry] < Self.largePayload, bytes >= Self.largePayload { largeEntries += 1 }
        residentPayload[entry] = bytes
    }

    private func answer(_ entry: Int, error: Int32) {
        var out = fuse_out_header(len: UInt32(Self.outHeaderBytes), error: -error, unique: commitIDs[entry])
        withUnsafeMutablePointer(to: &out) { header in
            var piece = iovec(iov_base: header, iov_len: Self.outHeaderBytes)
            _ = reply(entry: entry, &piece, 1)
        }
    }
}
