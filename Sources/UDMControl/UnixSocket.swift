import Foundation
import CLinux
import Glibc

/// The few socket calls the control plane needs, on plain file descriptors.
enum UnixSocket {
    static func address(_ path: String) throws -> sockaddr_un {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard bytes.count < capacity else { throw ControlError("socket path too long: \(path)") }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        return address
    }

    static func connect(_ path: String) throws -> Int32 {
        var address = try address(path)
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ControlError("socket: \(String(cString: strerror(errno)))") }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard result == 0 else {
            let error = errno
            close(fd)
            if error == EACCES || error == EPERM {
                throw ControlError("permission denied: the control socket \(path) is root-only (run udm as root)")
            }
            throw ControlError("cannot reach the udm daemon at \(path): \(String(cString: strerror(error))) (is `udm daemon` running?)")
        }
        return fd
    }

    /// Binds and listens at `path` with mode 0600 (only the owner, root, may connect).
    static func listen(_ path: String) throws -> Int32 {
        var address = try address(path)
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ControlError("socket: \(String(cString: strerror(errno)))") }
        unlink(path)
        let oldMask = umask(0o177)
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        umask(oldMask)
        guard result == 0, chmod(path, 0o600) == 0, Glibc.listen(fd, 64) == 0 else {
            let error = errno
            close(fd)
            throw ControlError("cannot listen on \(path): \(String(cString: strerror(error)))")
        }
        return fd
    }

    /// The connecting process's uid (SO_PEERCRED).
    static func peerUID(_ fd: Int32) -> uid_t? {
        var credentials = udm_peer_credentials()
        var length = socklen_t(MemoryLayout<udm_peer_credentials>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &credentials, &length) == 0 else { return nil }
        return credentials.uid
    }

    /// Reads one newline-terminated message of at most `limit` bytes.
    static func readLine(_ fd: Int32, limit: Int) throws -> Data {
        var data = Data()
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else {
                if data.isEmpty { throw ControlError("connection closed before a message arrived") }
                return data
            }
            if let newline = chunk[0..<n].firstIndex(of: 0x0A) {
                data.append(contentsOf: chunk[0..<newline])
                return data
            }
            data.append(contentsOf: chunk[0..<n])
            guard data.count <= limit else { throw ControlError("message larger than \(limit) bytes") }
        }
    }

    static func writeAll(_ fd: Int32, _ data: Data) {
        data.withUnsafeBytes { raw in
            var done = 0
            while done < raw.count {
                let n = write(fd, raw.baseAddress! + done, raw.count - done)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { return }
                done += n
            }
        }
    }
}
