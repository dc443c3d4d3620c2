/// Target types by table name (dm: the registered target_type list).
public final class TargetRegistry: Sendable {
    private let types: [String: any Target.Type]

    public init(_ types: [any Target.Type]) {
        self.types = Dictionary(uniqueKeysWithValues: types.map { ($0.name, $0) })
    }

    public func type(named name: String) -> (any Target.Type)? { types[name] }

    /// Sorted by name, for `udm targets`.
    public var all: [any Target.Type] { types.values.sorted { $0.name < $1.name } }
}
