/// An engine that carries a device's file transfers for the thread that serves it, so that the
/// thread goes on while the disk works (a FUSE ring's io_uring: the ring thread serves many
/// requests, and a synchronous pread would stall all of them). A thread has one only while it
/// submits a request that may use it; a bottom device asks `AsyncTransfer.current` and falls
/// back to its synchronous path when there is none or the engine is full.
public protocol AsyncTransferEngine: AnyObject {
    /// Starts reading (or writing) `count` bytes at `offset` of `fd`; `owner.transferEnded` is
    /// called on this thread once it is done. False when the engine cannot take it now.
    func startTransfer(write: Bool, fd: Int32, buffer: UnsafeMutableRawPointer, count: Int, offset: Int,
                       bio: Bio, owner: AsyncTransferOwner) -> Bool
}

/// A device whose transfers an engine carries: told how each one ended.
public protocol AsyncTransferOwner: AnyObject {
    /// `result`: bytes moved, or -errno.
    func transferEnded(_ bio: Bio, result: Int)
}

public enum AsyncTransfer {
    private final class Slot {
        var engine: AsyncTransferEngine?
    }

    private static let slot = ThreadLocal { Slot() }

    /// This thread's engine, if any.
    public static var current: AsyncTransferEngine? {
        get { slot.value.engine }
        set { slot.value.engine = newValue }
    }

    /// Runs `body` with this thread's engine set to `engine` (nil: none), then restores it.
    @inline(__always)
    public static func with<T>(_ engine: AsyncTransferEngine?, _ body: () throws -> T) rethrows -> T {
        let box = slot.value
        let saved = box.engine
        box.engine = engine
        defer { box.engine = saved }
        return try body()
    }
}
