import Foundation
import Glibc

/// libFuzzer entry for the control protocol decoder, compiled together with the daemon's own
/// ControlProtocol.swift and UnixSocket.swift: the input arrives on a socket the way a client's
/// bytes do, is framed by UnixSocket.readLine (one line, at most 1 MiB) and decoded as the
/// server does (ControlRequest) and as the client does (ControlResponse). A request that
/// decodes must encode and decode back to the same JSON.
/// Found: nothing (deep nesting, invalid UTF-8 and oversized lines are all refused cleanly).
@_cdecl("LLVMFuzzerTestOneInput")
public func controlFuzzerInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    var fds: [Int32] = [0, 0]
    guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0 else { fatalError("socketpair: \(errno)") }
    defer { close(fds[0]) }
    // Inputs are at most -max_len bytes (64 KiB in tools/fuzz), which the socket buffer holds.
    precondition(write(fds[1], data, size) == size, "short write to the socket pair")
    close(fds[1])
    guard let line = try? UnixSocket.readLine(fds[0], limit: ControlCoding.maxRequestBytes) else { return 0 }
    precondition(line.count <= ControlCoding.maxRequestBytes + 65536, "readLine returned \(line.count) bytes")
    _ = try? JSONDecoder().decode(ControlResponse.self, from: line)
    guard let request = try? JSONDecoder().decode(ControlRequest.self, from: line) else { return 0 }
    let sorted = JSONEncoder()
    sorted.outputFormatting = [.sortedKeys]
    let once = ControlCoding.encode(request)
    guard let again = try? JSONDecoder().decode(ControlRequest.self, from: once) else {
        preconditionFailure("an encoded request does not decode: \(String(decoding: once, as: UTF8.self))")
    }
    precondition((try? sorted.encode(request)) == (try? sorted.encode(again)), "a request changed in an encode/decode round trip")
    return 0
}
