import Synchronization

/// What the targets of one daemon share: the copy engine, and objects a target type keeps
/// across tables and devices (the snapshot targets' origin registry). Passed in through
/// `TargetContext`, never global, so two daemons (or two tests) never share state.
public final class TargetServices: Sendable {
    public let copyEngine: CopyEngine
    private let shared = Mutex<[ObjectIdentifier: AnyObject & Sendable]>([:])

    public init(copyEngine: CopyEngine = CopyEngine()) {
        self.copyEngine = copyEngine
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
