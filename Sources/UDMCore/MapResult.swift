/// What a target's `map` did with a clone (dm: DM_MAPIO_*).
public enum MapResult: Sendable {
    /// The target changed the clone's sector; the core submits it to this device.
    case remapped(to: BlockDevice)
    /// The target took the clone over and will call `end` on it itself.
    case submitted
    /// Fail the clone with this status.
    case kill(BioStatus)
    /// Try the whole original bio again later (after a resume, if the device is suspended).
    case requeue
}
