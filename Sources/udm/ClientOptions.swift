import ArgumentParser
import Foundation
import Glibc
import UDMControl

/// How a client verb finds the daemon, and how it reports the daemon's answer.
struct ClientOptions: ParsableArguments {
    @Option(help: "The daemon's control socket (default: $UDM_SOCKET, else \(DaemonConfig.defaultSocket)).")
    var socket: String?

    var socketPath: String {
        socket ?? ProcessInfo.processInfo.environment["UDM_SOCKET"] ?? DaemonConfig.defaultSocket
    }

    /// Sends the request; prints the answer, or one line on stderr and exits non-zero.
    func send(_ request: ControlRequest) throws {
        let output = ask(request)
        if !output.isEmpty { print(output) }
    }

    /// Sends the request and returns the answer; on refusal prints one line and exits non-zero.
    func ask(_ request: ControlRequest) -> String {
        let response: ControlResponse
        do {
            response = try ControlClient.send(request, socket: socketPath)
        } catch {
            fail("\(error)")
        }
        guard response.ok else { fail(response.error ?? "the daemon refused the request") }
        return response.output
    }
}

/// Prints `udm: message` on stderr and exits with `status`.
func fail(_ message: String, status: Int32 = 1) -> Never {
    FileHandle.standardError.write(Data("udm: \(message)\n".utf8))
    Foundation.exit(status)
}

/// Where a table comes from: --table, --table-file, or standard input.
struct TableOptions: ParsableArguments {
    @Option(help: "The table text (lines separated by newlines).")
    var table: String?

    @Option(help: "Read the table from this file.")
    var tableFile: String?

    /// The table text and the name to cite in errors.
    func read() -> (text: String, source: String?) {
        if table != nil && tableFile != nil { fail("give --table or --table-file, not both") }
        if let table { return (table, nil) }
        if let tableFile { return (readTableFile(tableFile, failing: { fail($0) }), tableFile) }
        return (readStandardInput(), "stdin")
    }
}

/// The text of table file `path`; `failing` gets the one-line reason it cannot be read.
func readTableFile(_ path: String, failing: (String) -> Never) -> String {
    guard let data = FileManager.default.contents(atPath: path) else {
        // FileManager drops the reason; open(2) names it.
        let fd = open(path, O_RDONLY)
        let reason = fd < 0 ? String(cString: strerror(errno)) : "not a readable file"
        if fd >= 0 { close(fd) }
        failing("cannot read table file \(path): \(reason)")
    }
    return String(decoding: data, as: UTF8.self)
}

func readStandardInput() -> String {
    String(decoding: FileHandle.standardInput.readDataToEndOfFile(), as: UTF8.self)
}
