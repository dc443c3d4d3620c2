import CFuse3
internal import CUring
import Glibc
import Synchronization

/// FUSE over io_uring beside libfuse. libfuse keeps mounting, answering FUSE_INIT and serving
/// /dev/fuse (interrupts and forgets stay there); it reads and writes the device through this
/// transport's hooks (`fuse_session_custom_io`), which
/// - note the INIT request, and add FUSE_OVER_IO_URING to libfuse's INIT reply when the kernel
///   offered it (libfuse 3.14 predates the flag);
/// - route a reply whose unique is a ring tag into its ring entry (`RingQueue.reply`).
/// After INIT, one `RingQueue` per possible CPU registers its entries; once every queue has
/// some, the kernel sends all ordinary requests over the rings. Every request still goes
/// through libfuse's dispatcher and the same handlers, request pool and disk queues.
final class UringTransport: @unchecked Sendable {
    /// Entries of all queues together (split evenly between the CPUs).
    let totalEntries: Int
    /// Set before any ring thread starts, read by the reply hook afterwards.
    private var queues: [RingQueue] = []
    private let initUnique = Atomic<UInt64>(0)
    private let offered = Atomic<Bool>(false)
    /// The INIT reply: sent, and the payload size every entry needs.
    private let initReply = Mutex<(sent: Bool, payloadBytes: Int)>((false, 0))

    init(totalEntries: Int) {
        self.totalEntries = totalEntries
    }

    /// The hooks; `userdata` is the session's (the `DiskDirectory`, which holds this transport).
    static var customIO: fuse_custom_io {
        var io = fuse_custom_io()
        io.read = { fd, buffer, length, userdata in
            let count = Glibc.read(fd, buffer, length)
            if count >= MemoryLayout<fuse_in_header>.size + 20, let buffer,
               buffer.load(fromByteOffset: 4, as: UInt32.self) == udm_fuse_opcode_init {
                UringTransport.from(userdata).sawInit(UnsafeRawPointer(buffer))
            }
            return count
        }
        io.writev = { fd, iov, count, userdata in
            guard let iov, count > 0 else { return Glibc.writev(fd, iov, count) }
            let unique = iov[0].iov_base.load(fromByteOffset: 8, as: UInt64.self)
            let transport = UringTransport.from(userdata)
            if unique & RingQueue.tagBit != 0 {
                let (ring, entry) = RingQueue.route(unique)
                return transport.queues[ring].reply(entry: entry, iov, Int(count))
            }
            if unique != 0, unique == transport.initUnique.load(ordering: .acquiring) {
                return transport.sendInitReply(fd, iov, Int(count))
            }
            return Glibc.writev(fd, iov, count)
        }
        return io
    }

    private static func from(_ userdata: UnsafeMutableRawPointer?) -> UringTransport {
        Unmanaged<DiskDirectory>.fromOpaque(userdata!).takeUnretainedValue().ring!
    }

    /// The kernel's INIT request: its unique, and whether it offers io_uring (flags2 is only
    /// there when flags carries FUSE_INIT_EXT).
    private func sawInit(_ message: UnsafeRawPointer) {
        let arguments = message + MemoryLayout<fuse_in_header>.size
        let flags = arguments.load(fromByteOffset: 12, as: UInt32.self)
        let flags2 = arguments.load(fromByteOffset: 16, as: UInt32.self)
        offered.store(flags & udm_fuse_init_ext != 0 && flags2 & UInt32(udm_fuse_over_io_uring >> 32) != 0,
                      ordering: .relaxed)
        initUnique.store(message.load(fromByteOffset: 8, as: UInt64.self), ordering: .releasing)
    }

    /// libfuse's INIT reply, with FUSE_OVER_IO_URING added when offered; notes the payload size
    /// entries must have (the kernel's: the larger of 8 KiB, max_write and max_pages pages).
    private func sendInitReply(_ fd: Int32, _ iov: UnsafeMutablePointer<iovec>, _ count: Int) -> Int {
        var bytes: [UInt8] = []
        for piece in 0..<count {
            bytes += UnsafeRawBufferPointer(start: iov[piece].iov_base, count: iov[piece].iov_len)
        }
        let outHeader = MemoryLayout<fuse_out_header>.size
        var payloadBytes = 0
        let succeeded = bytes.withUnsafeBytes { $0.load(fromByteOffset: 4, as: Int32.self) } == 0
        if succeeded, bytes.count >= outHeader + 36 {
            bytes.withUnsafeMutableBytes { raw in
                let reply = raw.baseAddress! + outHeader
                var flags = reply.load(fromByteOffset: 12, as: UInt32.self)
                if offered.load(ordering: .relaxed) {
                    flags |= udm_fuse_init_ext
                    reply.storeBytes(of: flags, toByteOffset: 12, as: UInt32.self)
                    let flags2 = reply.load(fromByteOffset: 32, as: UInt32.self) | UInt32(udm_fuse_over_io_uring >> 32)
                    reply.storeBytes(of: flags2, toByteOffset: 32, as: UInt32.self)
                }
                let maxWrite = Int(reply.load(fromByteOffset: 20, as: UInt32.self))
                let maxPages = flags & udm_fuse_max_pages != 0 ? Int(reply.load(fromByteOffset: 28, as: UInt16.self)) : 32
                payloadBytes = max(8192, maxWrite, maxPages * 4096)
            }
        }
        let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        let error = errno
        initReply.withLock { $0 = (true, written == bytes.count ? payloadBytes : 0) }
        errno = error
        return written
    }

    /// Waits for libfuse to answer INIT (the loop must be running), then registers one ring
    /// per possible CPU. Throws the reason when the rings cannot be used; the kernel then goes
    /// on with /dev/fuse (it only switches once every queue has registered entries).
    func start(session: OpaquePointer, fd: Int32) throws -> String {
        var waited = 0
        while !initReply.withLock({ $0.sent }) {
            guard waited < 10_000 else { throw FuseError("the kernel sent no FUSE INIT within 10 s") }
            usleep(1000)
            waited += 1
        }
        guard offered.load(ordering: .relaxed) else {
            throw FuseError("the kernel did not offer FUSE over io_uring at INIT")
        }
        let payloadBytes = initReply.withLock { $0.payloadBytes }
        guard payloadBytes > 0 else { throw FuseError("the FUSE INIT reply failed") }
        let cpus = Self.possibleCPUs()
        let entries = max(1, totalEntries / cpus)
        do {
            queues = try (0..<cpus).map {
                try RingQueue(qid: UInt16($0), index: $0, entries: entries, payloadBytes: payloadBytes, fuseFD: fd, session: session)
            }
        } catch {
            queues = []
            throw error
        }
        for (index, queue) in queues.enumerated() {
            if let reason = queue.start() {
                queues[0..<index].forEach { $0.stop(afterSeconds: 0) }
                throw FuseError(reason)
            }
        }
        return "\(cpus) queues x \(entries) entries of \(payloadBytes >> 10) KiB"
    }

    /// After unmount: the kernel ends every entry's command as the connection goes, and the
    /// threads leave; a thread whose entries are still registered is made to leave.
    func stop(waitSeconds: Int) {
        for queue in queues {
            queue.stop(afterSeconds: waitSeconds)
        }
    }

    /// Queue ids are CPU numbers: one more than the highest possible CPU.
    private static func possibleCPUs() -> Int {
        let fd = open("/sys/devices/system/cpu/possible", O_RDONLY | O_CLOEXEC)
        defer { if fd >= 0 { close(fd) } }
        var bytes = [UInt8](repeating: 0, count: 256)
        let count = fd >= 0 ? Glibc.read(fd, &bytes, bytes.count) : -1
        guard count > 0 else { return Int(sysconf(Int32(_SC_NPROCESSORS_CONF))) }
        let text = String(decoding: bytes[0..<count], as: UTF8.self)
        let highest = text.split(whereSeparator: { ",-\n".contains($0) }).compactMap { Int($0) }.max() ?? 0
        return highest + 1
    }
}
