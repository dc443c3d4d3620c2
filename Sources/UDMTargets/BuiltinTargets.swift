import UDMCore

/// The one list of targets udm ships; a new target adds one line here.
public enum BuiltinTargets {
    public static let all: [any Target.Type] = [
        LinearTarget.self,
        ErrorTarget.self,
        ZeroTarget.self,
        StripedTarget.self,
        FlakeyTarget.self,
        DelayTarget.self,
        LogWritesTarget.self,
        SnapshotOriginTarget.self,
        SnapshotTarget.self,
        SnapshotMergeTarget.self,
    ]

    public static let registry = TargetRegistry(all)
}
