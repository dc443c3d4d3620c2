import Glibc
import UDMCore

/// The fixed pools a FUSE request is served from: request state, and aligned data buffers in
/// three sizes (most requests are 4 KiB; max_write is 1 MiB). Everything is made at start, so
/// serving a request allocates nothing. Each class is one mapping of `count x size` bytes of
/// address space (MAP_NORESERVE), resident only as far as used.
///
/// A request takes the smallest free buffer that fits, a warm one before a spare one. Warm
/// buffers (32 MiB + 16.5 MiB + 32 MiB) stay resident once used; free lists are LIFO, so a
/// light load keeps reusing the same few. The 1 MiB class also has a spare buffer for every
/// request, so held large writes (a suspended disk's, say) wait in buffers, never in a worker:
/// a spare buffer's pages go back to the kernel when its request ends, so memory beyond the
/// warm sets is the data held at that moment, at most the kernel's background limit x 1 MiB.
/// A taking thread (a libfuse worker) waits only when every request slot is in use.
final class RequestPool: @unchecked Sendable {
    struct Sizes: Sendable {
        var requests: Int
        /// Buffers per class, smallest class first.
        var buffers: [Int]
        /// Per class, how many of its buffers stay resident once used (the rest are spare).
        var warm: [Int]

        init(requests: Int, buffers: [Int], warm: [Int]? = nil) {
            self.requests = requests
            self.buffers = buffers
            self.warm = warm ?? buffers
        }

        /// 4096 requests: the kernel's background limit is set from it, so that disks holding
        /// their full depth cannot fill what the kernel lets through. A 1 MiB buffer for each.
        static let standard = Sizes(requests: 4096, buffers: [4096, 128, 4096], warm: [4096, 128, 32])
    }

    /// Bytes per buffer class: a request's data plus, for writes that do not cover whole
    /// sectors, the covering sectors and a sector of scratch at each edge.
    static let classBytes = [8 << 10, (128 << 10) + (4 << 10), (1 << 20) + (8 << 10)]
    /// The largest buffer a request may ask for.
    static var largestBuffer: Int { classBytes.last! }

    let capacity: Int
    private let lock = ConditionLock()
    private var freeRequests: FuseRequest?
    /// Per class: the mapping, its warm count, and the free buffers' indices in it (stacks,
    /// reserved in full; warm and spare apart).
    private var regions: [UnsafeMutableRawPointer] = []
    private var regionBytes: [Int] = []
    private let warm: [Int]
    private var freeWarm: [[Int32]] = []
    private var freeSpare: [[Int32]] = []
    private var inUse = 0

    init(sizes: Sizes = .standard) {
        precondition(sizes.buffers.count == Self.classBytes.count && sizes.requests > 0)
        capacity = sizes.requests
        warm = zip(sizes.warm, sizes.buffers).map { min($0, $1) }
        for _ in 0..<sizes.requests {
            let request = FuseRequest(pool: self)
            request.next = freeRequests
            freeRequests = request
        }
        for (index, count) in sizes.buffers.enumerated() {
            let bytes = max(1, count) * Self.classBytes[index]
            let region = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
            guard let region, region != MAP_FAILED else {
                fatalError("cannot map \(bytes) bytes of address space for FUSE request buffers: \(String(cString: strerror(errno)))")
            }
            regions.append(region)
            regionBytes.append(bytes)
            freeWarm.append(Array((0..<Int32(warm[index])).reversed()))
            freeSpare.append(Array((Int32(warm[index])..<Int32(count)).reversed()))
        }
    }

    deinit {
        for (region, bytes) in zip(regions, regionBytes) { munmap(region, bytes) }
    }

    /// The kernel's max_background: every request but a reserve of 1/8 for synchronous ones,
    /// which the kernel does not count against it.
    var backgroundLimit: Int { min(65535, max(1, capacity - capacity / 8)) }

    /// Requests currently taken (for shutdown: all are answered once this is 0).
    var outstanding: Int { lock.withLock { inUse } }

    /// A request with a buffer of at least `bytes` (none for 0), waiting if none is free.
    func take(bytes: Int) -> FuseRequest {
        precondition(bytes <= Self.largestBuffer, "a FUSE request of \(bytes) bytes is larger than max_write allows")
        lock.lock()
        defer { lock.unlock() }
        while true {
            if let request = freeRequests, let (buffer, index) = takeBuffer(bytes) {
                freeRequests = request.next
                request.next = nil
                request.buffer = buffer
                request.bufferClass = index
                inUse += 1
                return request
            }
            lock.wait()
        }
    }

    /// A request whose data buffer is `buffer`, which the caller lends for as long as the
    /// request lives (a FUSE ring entry's payload): nothing of the pool's buffers is taken.
    func take(borrowing buffer: UnsafeMutableRawPointer) -> FuseRequest {
        let request = take(bytes: 0)
        request.buffer = buffer
        request.bufferClass = FuseRequest.borrowedBuffer
        return request
    }

    /// With `lock` held: the smallest free buffer of at least `bytes`.
    private func takeBuffer(_ bytes: Int) -> (UnsafeMutableRawPointer?, Int)? {
        if bytes == 0 { return (nil, -1) }
        for index in Self.classBytes.indices where Self.classBytes[index] >= bytes {
            if let slot = freeWarm[index].popLast() ?? freeSpare[index].popLast() {
                return (regions[index] + Int(slot) * Self.classBytes[index], index)
            }
        }
        return nil
    }

    func give(_ request: FuseRequest) {
        var spare = false
        if let buffer = request.buffer, request.bufferClass >= 0 {
            let index = request.bufferClass
            spare = (buffer - regions[index]) / Self.classBytes[index] >= warm[index]
            if spare { _ = madvise(buffer, Self.classBytes[index], MADV_DONTNEED) }
        }
        lock.withLock {
            if let buffer = request.buffer, request.bufferClass >= 0 {
                let index = request.bufferClass
                let slot = Int32((buffer - regions[index]) / Self.classBytes[index])
                if spare { freeSpare[index].append(slot) } else { freeWarm[index].append(slot) }
            }
            request.buffer = nil
            request.next = freeRequests
            freeRequests = request
            inUse -= 1
            lock.broadcast()
        }
    }

    /// Waits up to `seconds` for every request to come back; false if some did not.
    func waitUntilIdle(seconds: Int) -> Bool {
        for _ in 0..<(seconds * 100) {
            if outstanding == 0 { return true }
            usleep(10_000)
        }
        return outstanding == 0
    }
}
