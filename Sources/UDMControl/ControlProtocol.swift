import Foundation

/// The control protocol: one JSON object per line each way over the Unix socket; one request
/// per connection.
public struct ControlRequest: Codable, Sendable {
    public enum Verb: String, Codable, Sendable {
        case create, load, suspend, resume, clear, remove, ls, table, status, info, stats, message, shutdown, ping
        case snapshotCreate = "snapshot-create", snapshotList = "snapshot-list", snapshotRemove = "snapshot-remove"
        case snapshotMerge = "snapshot-merge"
    }

    public var verb: Verb
    public var name: String?
    public var table: String?
    /// Where the table text came from, for error messages ("table.txt line 3: …").
    public var tableSource: String?
    public var force: Bool?
    public var words: [String]?
    /// Report verbs (ls, table, status, info, stats, snapshot-list): answer JSON instead of text.
    public var json: Bool?
    /// For stats: start the counters again from zero after reading them.
    public var clearStats: Bool?
    /// For snapshot-create.
    public var snapshot: SnapshotOptions?
    /// For create: also attach a loop device and make MAPPER-DIR/NAME (dmsetup create).
    public var mapper: Bool?
    /// For suspend: freeze a file system mounted from the disk's block device first.
    public var lockfs: Bool?

    public struct SnapshotOptions: Codable, Sendable {
        public var origin: String
        public var cow: String
        public var size: UInt64?
        public var chunkSize: UInt64
        public var transient: Bool
        public var overflow: Bool
        /// Write zeros over a new COW file, so its blocks exist before the first copy.
        public var preallocate: Bool?
        /// Adopt the snapshot store an existing COW file holds (else such a COW is refused).
        public var reuseCow: Bool?

        /// The chunk size a new store gets: the one asked for, or dm's default of 32 sectors for 0.
        var effectiveChunkSize: UInt64 { chunkSize == 0 ? 32 : chunkSize }

        public init(origin: String, cow: String, size: UInt64?, chunkSize: UInt64, transient: Bool, overflow: Bool,
                    preallocate: Bool = false, reuseCow: Bool = false) {
            self.reuseCow = reuseCow
            self.origin = origin
            self.cow = cow
            self.size = size
            self.chunkSize = chunkSize
            self.transient = transient
            self.overflow = overflow
            self.preallocate = preallocate
        }
    }

    public init(verb: Verb, name: String? = nil, table: String? = nil, tableSource: String? = nil,
                force: Bool? = nil, words: [String]? = nil, json: Bool? = nil, clearStats: Bool? = nil,
                snapshot: SnapshotOptions? = nil, mapper: Bool? = nil, lockfs: Bool? = nil) {
        self.mapper = mapper
        self.lockfs = lockfs
        self.verb = verb
        self.name = name
        self.table = table
        self.tableSource = tableSource
        self.force = force
        self.words = words
        self.json = json
        self.clearStats = clearStats
        self.snapshot = snapshot
    }
}

public struct ControlResponse: Codable, Sendable {
    public var ok: Bool
    public var output: String
    public var error: String?

    public static func success(_ output: String = "") -> ControlResponse { ControlResponse(ok: true, output: output) }
    public static func failure(_ error: String) -> ControlResponse { ControlResponse(ok: false, output: "", error: error) }
}

/// A control operation refused, with the one line the CLI prints.
public struct ControlError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

enum ControlCoding {
    /// Requests larger than this are refused without reading further.
    static let maxRequestBytes = 1 << 20

    static func encode<T: Encodable>(_ value: T) -> Data {
        var data = (try? JSONEncoder().encode(value)) ?? Data("{}".utf8)
        data.append(0x0A)
        return data
    }
}
