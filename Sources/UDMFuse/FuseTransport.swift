internal import CUring
import Glibc

/// How FUSE requests reach the daemon and its replies leave: `legacy`, a read() of /dev/fuse
/// per request and a write() per reply on libfuse's workers; `uring`, FUSE over io_uring (one
/// ring per CPU, `UringTransport`); `auto`, uring where this kernel and configuration allow it,
/// else legacy.
public enum FuseTransport: String, Sendable, CaseIterable {
    case auto
    case uring
    case legacy
}

/// Whether FUSE over io_uring can be used here, checked before mounting. A nil answer means
/// yes; otherwise the one-line reason it cannot. Turns the fuse module's `enable_uring` on when
/// it is off and the daemon runs as root (it is read when a connection initializes, so it only
/// affects mounts made from now on, and only those whose server asks for io_uring).
enum UringProbe {
    static let enableParameter = "/sys/module/fuse/parameters/enable_uring"
    static let disabledSetting = "/proc/sys/kernel/io_uring_disabled"

    static func reasonUnavailable() -> String? {
        if let disabled = firstLine(disabledSetting), let value = Int(disabled), value != 0 {
            // 1: only members of kernel.io_uring_group (and root) may create rings; 2: nobody.
            if value == 2 || geteuid() != 0 {
                return "io_uring is disabled (kernel.io_uring_disabled = \(value))"
            }
        }
        guard let enabled = firstLine(enableParameter) else {
            return "this kernel has no FUSE over io_uring (no \(enableParameter); needs Linux 6.14+ with CONFIG_FUSE_IO_URING)"
        }
        if enabled != "Y" {
            guard geteuid() == 0 else { return "FUSE over io_uring is off (\(enableParameter) = \(enabled)) and only root may turn it on" }
            if let error = write("Y", to: enableParameter) {
                return "cannot turn on FUSE over io_uring (\(enableParameter)): \(error)"
            }
        }
        var ring = io_uring()
        var params = io_uring_params()
        params.flags = UInt32(IORING_SETUP_SQE128)
        let result = io_uring_queue_init_params(8, &ring, &params)
        guard result == 0 else {
            let limit = udm_memlock_limit()
            let locked = limit == UInt64.max ? "unlimited" : "\(limit >> 10) KiB"
            return "cannot set up an io_uring with 128-byte entries: \(String(cString: strerror(-result))) (locked-memory limit \(locked))"
        }
        io_uring_queue_exit(&ring)
        return nil
    }

    private static func firstLine(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: 64)
        let count = read(fd, &bytes, bytes.count)
        guard count > 0 else { return nil }
        return String(decoding: bytes[0..<count], as: UTF8.self).split(separator: "\n").first.map(String.init) ?? ""
    }

    /// nil on success, else the error.
    private static func write(_ text: String, to path: String) -> String? {
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { return String(cString: strerror(errno)) }
        defer { close(fd) }
        let written = text.withCString { Glibc.write(fd, $0, strlen($0)) }
        return written < 0 ? String(cString: strerror(errno)) : nil
    }
}
