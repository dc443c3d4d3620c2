import Foundation
import Glibc

/// The daemon's persisted device definitions: `STATE/devices.json`, replaced atomically
/// (write a temporary file, fsync it, rename it over the old one, fsync the directory) after
/// every change, and read back when the daemon starts.
struct StateStore {
    struct Definition: Codable, Equatable {
        var name: String
        /// The live table, as loaded.
        var table: String?
        /// A loaded table not yet resumed.
        var inactive: String?
        /// Recorded for the operator; disks are restored active.
        var suspended: Bool
        /// On an origin: its snapshot group (absent from files saved before groups were kept).
        var snapshots: SnapshotGroup? = nil
        /// Created through dmsetup: a restarted daemon attaches a loop device and makes the
        /// /dev/mapper node again.
        var mapper: Bool? = nil
    }

    let directory: String
    var path: String { directory + "/devices.json" }

    func load() throws -> [Definition] {
        guard FileManager.default.fileExists(atPath: path) else { return [] }
        do {
            let data = try Data(contentsOf: URL(fileURLWithPath: path))
            return try JSONDecoder().decode([Definition].self, from: data)
        } catch {
            throw ControlError("\(path): cannot read the saved disk definitions: \(error)")
        }
    }

    func save(_ definitions: [Definition]) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        let data = try encoder.encode(definitions)
        let temporary = path + ".tmp"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw ControlError("\(temporary): \(String(cString: strerror(errno)))") }
        let written = data.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        let synced = fsync(fd)
        close(fd)
        guard written == data.count, synced == 0, rename(temporary, path) == 0 else {
            throw ControlError("\(path): cannot save the disk definitions: \(String(cString: strerror(errno)))")
        }
        let dirFD = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dirFD >= 0 {
            fsync(dirFD)
            close(dirFD)
        }
    }
}
