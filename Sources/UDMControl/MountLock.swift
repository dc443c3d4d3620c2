import Foundation
import Glibc

/// An exclusive flock on `.NAME.udm-lock` beside the mount point, held for the daemon's life:
/// while it is held a daemon serves that mount, and the kernel lets go of it when the daemon
/// dies however it dies. The file names its holder (pid and socket) for the refusal message.
struct MountLock {
    private let fd: Int32

    init(mountPoint: String, socketPath: String) throws {
        let mount = (mountPoint as NSString).standardizingPath
        let parent = (mount as NSString).deletingLastPathComponent
        do {
            try FileManager.default.createDirectory(atPath: parent, withIntermediateDirectories: true)
        } catch {
            throw ControlError("cannot create directory \(parent): \((error as NSError).localizedDescription)")
        }
        let path = parent + "/." + (mount as NSString).lastPathComponent + ".udm-lock"
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw ControlError("cannot open the mount lock \(path): \(String(cString: strerror(errno)))") }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let holder = (try? String(contentsOfFile: path, encoding: .utf8))?
                .trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
            close(fd)
            throw ControlError("a udm daemon (\(holder.isEmpty ? "starting" : holder)) is already serving \(mount); stop it first with `udm shutdown`")
        }
        let holder = Array("pid \(getpid()), socket \(socketPath)\n".utf8)
        ftruncate(fd, 0)
        _ = holder.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
        self.fd = fd
    }

    /// Clears the holder's name and lets go (the file stays: removing it would race a daemon
    /// that has just opened it).
    func release() {
        ftruncate(fd, 0)
        close(fd)
    }
}
