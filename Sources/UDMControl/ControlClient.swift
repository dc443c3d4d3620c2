import Foundation
import Glibc

/// Sends one request to the daemon and returns its answer.
public enum ControlClient {
    public static func send(_ request: ControlRequest, socket path: String) throws -> ControlResponse {
        let fd = try UnixSocket.connect(path)
        defer { close(fd) }
        UnixSocket.writeAll(fd, ControlCoding.encode(request))
        let data = try UnixSocket.readLine(fd, limit: 64 << 20)
        do {
            return try JSONDecoder().decode(ControlResponse.self, from: data)
        } catch {
            throw ControlError("the daemon at \(path) sent an answer that is not a udm response")
        }
    }
}
