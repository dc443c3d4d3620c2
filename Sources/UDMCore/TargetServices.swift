import Synchronization

/// What the targets of one daemon share: the copy engine, the timer queue, and objects a target
/// type keeps across tables and devices (the snapshot targets' origin registry). Passed in through
/// `TargetContext`, never global, so two daemons (or two tests) never share state.
public final class TargetServices: Sendable {
    public let copyEngine: CopyEngine
    /// Deadlines for targets that hold I/O (delay); its thread starts with the first timer.
    public let timers: TimerQueue
    private let shared = Mutex<[ObjectIdentifier: AnyObject & Sendable]>([:])

    public init(copyEngine: CopyEngine = CopyEngine(), timers: TimerQueue = TimerQueue()) {
        self.copyEngine = copyEngine
        self.timers = timers
    }

    /// The one instance of `type` for these services, made by `make` on first use.
    public func shared<T: AnyObject & Sendable>(_ type: T.Type, make: () -> T) -> T {
        shared.withLock { objects in
            if let object = objects[ObjectIdentifier(type)] as? T { return object }
            let object = make()
            objects[ObjectIdentifier(type)] = object
            return object
        }
    }
}
