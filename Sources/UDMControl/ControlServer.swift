import Foundation
import Glibc
import Synchronization

/// Accepts control connections on the Unix socket, one thread per connection, and answers
/// each request through `handle`. Only root or the daemon's own user may talk to it. At most
/// `maxConnections` are served at once (each gives up on a silent client after 10 s); one
/// more is told the daemon is busy, so idle clients cannot pile up threads without bound.
final class ControlServer: @unchecked Sendable {
    private let listenFD: Int32
    private let path: String
    private let handle: @Sendable (ControlRequest) -> ControlResponse
    /// Requests read and not yet answered; stop waits for them (the shutdown request among
    /// them must get its answer before the process exits).
    private let unanswered = Mutex(0)
    private let connections = Mutex(0)
    static let maxConnections = 128

    init(path: String, handle: @escaping @Sendable (ControlRequest) -> ControlResponse) throws {
        self.path = path
        self.handle = handle
        listenFD = try UnixSocket.listen(path)
    }

    func start() {
        Thread.detachNewThread { [self] in acceptLoop() }
    }

    /// Stops accepting, then gives requests already being answered up to 5 s to finish.
    func stop() {
        unlink(path)
        shutdown(listenFD, Int32(SHUT_RDWR))
        for _ in 0..<500 {
            if unanswered.withLock({ $0 == 0 }) { return }
            usleep(10_000)
        }
    }

    private func acceptLoop() {
        while true {
            let fd = accept(listenFD, nil, nil)
            if fd < 0 {
                if errno == EINTR || errno == ECONNABORTED { continue }
                return
            }
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            let admitted = connections.withLock { open in
                guard open < Self.maxConnections else { return false }
                open += 1
                return true
            }
            guard admitted else {
                let busy = ControlResponse.failure("busy: \(Self.maxConnections) control connections are open; try again")
                UnixSocket.writeAll(fd, ControlCoding.encode(busy))
                close(fd)
                continue
            }
            Thread.detachNewThread { [self] in
                serve(fd)
                connections.withLock { $0 -= 1 }
            }
        }
    }

    private func serve(_ fd: Int32) {
        defer { close(fd) }
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var counted = false
        let response: ControlResponse
        if let uid = UnixSocket.peerUID(fd), uid == 0 || uid == geteuid() {
            do {
                let data = try UnixSocket.readLine(fd, limit: ControlCoding.maxRequestBytes)
                let request = try JSONDecoder().decode(ControlRequest.self, from: data)
                unanswered.withLock { $0 += 1 }
                counted = true
                response = handle(request)
            } catch let error as ControlError {
                response = .failure("bad request: \(error)")
            } catch {
                response = .failure("bad request: not a udm control request")
            }
        } else {
            response = .failure("permission denied: only root may control udm")
        }
        UnixSocket.writeAll(fd, ControlCoding.encode(response))
        if counted { unanswered.withLock { $0 -= 1 } }
    }
}
