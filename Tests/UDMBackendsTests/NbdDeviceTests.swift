import Foundation
import Glibc
import Synchronization
import UDMBackends
import UDMCore
import XCTest

/// NbdDevice against real nbdkit servers on Unix sockets in a temp dir: data reaches the
/// export and reads back through fresh connections; big bios are cut at the server's
/// maximum; what the server cannot do ends as the block layer would; a dropped connection's
/// I/O is held and re-issued on a restarted server, or fails with EIO after the timeout.
final class NbdDeviceTests: XCTestCase {
    private var directory = ""
    private var servers: [NbdServer] = []

    override func setUpWithError() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/nbdkit") else {
            throw XCTSkip("nbdkit is not installed (apt-get install nbdkit)")
        }
        var template = Array("/var/tmp/udm-nbd-XXXXXX".utf8CString)
        guard mkdtemp(&template) != nil else { throw CocoaError(.fileWriteUnknown) }
        directory = String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    override func tearDown() {
        servers.forEach { $0.stop() }
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// Starts `nbdkit ARGUMENTS` serving on a socket in the temp dir; returns its URI.
    private func serve(_ arguments: [String], socket name: String = "nbd.sock") throws -> NbdURI {
        let server = try NbdServer(socket: directory + "/" + name, arguments: arguments)
        servers.append(server)
        return NbdURI("nbd+unix:///?socket=\(server.socket)")!
    }

    private func pattern(_ bytes: Int, seed: UInt8) -> UnsafeMutableRawPointer {
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 4096)
        for index in 0..<bytes { buffer.storeBytes(of: UInt8(truncatingIfNeeded: index / 512 &+ Int(seed)), toByteOffset: index, as: UInt8.self) }
        return buffer
    }

    private func run(_ op: BioOp, _ sector: UInt64, _ sectors: UInt64, _ buffer: UnsafeMutableRawPointer? = nil,
                     flags: BioFlags = [], on device: BlockDevice) -> BioStatus {
        BioWaiter().run(Bio(op: op, sector: sector, sectors: sectors, buffer: buffer, flags: flags), on: device)
    }

    /// Reads `sectors` at `sector` through `device` and compares them with `expected`.
    private func assertReads(_ expected: UnsafeMutableRawPointer, _ sector: UInt64, _ sectors: UInt64, on device: BlockDevice,
                             _ message: String, line: UInt = #line) {
        let back = UnsafeMutableRawPointer.allocate(byteCount: Int(sectors) << 9, alignment: 4096)
        defer { back.deallocate() }
        XCTAssertEqual(run(.read, sector, sectors, back, on: device), .ok, message, line: line)
        XCTAssertEqual(memcmp(expected, back, Int(sectors) << 9), 0, message, line: line)
    }

    func testWritesReachTheExportAndReadBackThroughNewConnections() throws {
        let uri = try serve(["memory", "16M"])
        let device = try NbdDevice(uri: uri, timeout: 10)
        XCTAssertEqual(device.sectors, 32768)
        XCTAssertEqual(device.name, uri.text)
        XCTAssertTrue(device.canMultiConn, "nbdkit's memory plugin advertises multi-conn")
        XCTAssertEqual(device.link.state, .up)
        XCTAssertEqual(device.link.connections, NbdDevice.defaultConnections)
        XCTAssertEqual(device.link.reconnects, 0)
        let data = pattern(1 << 20, seed: 7)
        defer { data.deallocate() }
        // Eight 128 KiB writes, spread over the connections one by one.
        for piece in 0..<8 {
            XCTAssertEqual(run(.write, UInt64(4096 + piece * 256), 256, data + piece << 17, on: device), .ok)
        }
        XCTAssertEqual(run(.flush, 0, 0, on: device), .ok)
        let again = try NbdDevice(uri: uri, timeout: 10, connections: 1)
        assertReads(data, 4096, 2048, on: again, "through a new connection")
    }

    func testBiosLargerThanTheServerMaximumAreCut() throws {
        let uri = try serve(["--filter=blocksize-policy", "memory", "8M",
                             "blocksize-maximum=65536", "blocksize-error-policy=error"])
        let device = try NbdDevice(uri: uri, timeout: 10)
        XCTAssertEqual(device.maximumBlock, 65536)
        let data = pattern(1 << 20, seed: 3)
        defer { data.deallocate() }
        XCTAssertEqual(run(.write, 2048, 2048, data, flags: .fua, on: device), .ok)
        assertReads(data, 2048, 2048, on: device, "a 1 MiB read cut into 64 KiB requests")
    }

    func testAnExportWithBlocksLargerThanASectorIsRefused() throws {
        let uri = try serve(["--filter=blocksize-policy", "memory", "8M", "blocksize-minimum=4096"])
        XCTAssertThrowsError(try NbdDevice(uri: uri, timeout: 10)) { error in
            XCTAssertEqual("\(error)", "\(uri.text): the export needs requests aligned to 4096 bytes; udm sends 512-byte sectors")
        }
    }

    /// Write-zeroes is sent as NBD zero where the server has it, else as writes of zeros;
    /// PREFLUSH, FUA, discard and flush go through.
    func testZeroesFuaAndDiscardWithAndWithoutServerSupport() throws {
        let capable = try serve(["memory", "8M"], socket: "capable.sock")
        let limited = try serve(["--filter=nozero", "memory", "8M"], socket: "limited.sock")
        let zeros = UnsafeMutableRawPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        zeros.initializeMemory(as: UInt8.self, repeating: 0, count: 1 << 20)
        defer { zeros.deallocate() }
        for uri in [capable, limited] {
            let device = try NbdDevice(uri: uri, timeout: 10)
            let data = pattern(1 << 20, seed: 9)
            defer { data.deallocate() }
            XCTAssertEqual(run(.write, 0, 2048, data, flags: [.preflush, .fua], on: device), .ok, uri.text)
            XCTAssertEqual(run(.writeZeroes, 512, 1024, on: device), .ok, uri.text)
            (data + (512 << 9)).initializeMemory(as: UInt8.self, repeating: 0, count: 1024 << 9)
            assertReads(data, 0, 2048, on: device, "\(uri.text): zeroed in the middle")
            XCTAssertEqual(run(.discard, 1536, 512, on: device), .ok, uri.text)
            XCTAssertEqual(run(.flush, 0, 0, on: device), .ok, uri.text)
        }
    }

    /// The server stops answering with a write out, then dies: the write is held, not failed,
    /// and lands once a server listens on the same socket again.
    func testAWriteIsHeldUntilTheServerComesBack() throws {
        let file = directory + "/export.img"
        XCTAssertTrue(FileManager.default.createFile(atPath: file, contents: Data(count: 4 << 20)))
        let uri = try serve(["file", file])
        let device = try NbdDevice(uri: uri, timeout: 60, connections: 1)
        let data = pattern(65536, seed: 5)
        defer { data.deallocate() }
        servers[0].signal(SIGSTOP)
        let done = Completion()
        let status = Mutex<BioStatus?>(nil)
        let write = Bio(op: .write, sector: 128, sectors: 128, buffer: data, flags: .fua)
        startThread {
            let result = BioWaiter().run(write, on: device)
            status.withLock { $0 = result }
            done.signal()
        }
        while device.link.inFlight == 0 { usleep(10_000) }
        servers[0].stop()
        while device.link.state == .up { usleep(10_000) }
        XCTAssertNil(status.withLock { $0 }, "held while the server is away")
        XCTAssertEqual(device.link.inFlight, 1)
        _ = try serve(["file", file])
        done.wait()
        XCTAssertEqual(status.withLock { $0 }, .ok)
        XCTAssertEqual(device.link.state, .up)
        XCTAssertGreaterThanOrEqual(device.link.reconnects, 1)
        let written = try Data(contentsOf: URL(fileURLWithPath: file))
        XCTAssertEqual(written.subdata(in: 65536..<131072), Data(bytes: data, count: 65536), "on the server's file")
    }

    /// nbdkit asked to stop (SIGTERM) answers commands with ESHUTDOWN and waits for its
    /// clients to go: the write is held, the connection dropped, and the write lands on the
    /// next server.
    func testAServerShuttingDownIsLeftAndItsIOHeld() throws {
        let file = directory + "/export.img"
        XCTAssertTrue(FileManager.default.createFile(atPath: file, contents: Data(count: 4 << 20)))
        let uri = try serve(["file", file])
        let device = try NbdDevice(uri: uri, timeout: 60, connections: 1)
        let data = pattern(65536, seed: 8)
        defer { data.deallocate() }
        servers[0].signal(SIGTERM)
        // Once it refuses new connections (or leaves them unanswered) it has taken the
        // signal: the write comes after.
        var refusing = false
        for _ in 0..<3000 where !refusing {
            refusing = (try? NbdDevice(uri: uri, timeout: 2, connections: 1)) == nil
            if !refusing { usleep(10_000) }
        }
        XCTAssertTrue(refusing, "nbdkit took SIGTERM")
        let write = Bio(op: .write, sector: 256, sectors: 128, buffer: data)
        let done = Completion()
        startThread {
            BioWaiter().run(write, on: device)
            done.signal()
        }
        var polls = 0
        while device.link.state == .up && polls < 3000 {
            usleep(10_000)
            polls += 1
        }
        XCTAssertNotEqual(device.link.state, .up, "left the server that is shutting down")
        servers[0].stop()
        _ = try serve(["file", file])
        done.wait()
        XCTAssertEqual(write.status, .ok)
        XCTAssertEqual(device.link.reconnects, 1)
        let written = try Data(contentsOf: URL(fileURLWithPath: file))
        XCTAssertEqual(written.subdata(in: 131072..<196608), Data(bytes: data, count: 65536), "on the server's file")
    }

    /// No server comes back: held I/O ends with EIO after the timeout, later I/O fails at once.
    func testIOFailsWithEIOAfterTheTimeout() throws {
        let uri = try serve(["memory", "8M"])
        let device = try NbdDevice(uri: uri, timeout: 0.5, connections: 1)
        let data = pattern(4096, seed: 1)
        defer { data.deallocate() }
        servers[0].stop()
        XCTAssertEqual(run(.write, 0, 8, data, on: device), .ioError)
        XCTAssertEqual(device.link.state, .down)
        XCTAssertEqual(run(.read, 0, 8, data, on: device), .ioError)
        XCTAssertFalse(device.link.lastError.isEmpty)
    }

    func testNbdURIsAreRecognisedByScheme() {
        for uri in ["nbd://host/export", "nbds://host:10809/", "nbd+unix:///e?socket=/s", "NBD+UNIX:///?socket=/s", "nbd+vsock://1"] {
            XCTAssertEqual(NbdURI(uri)?.text, uri)
        }
        for other in ["/dev/sda", "nbd:/x", "nbdx://host/", "http://host/", "nbd", ""] {
            XCTAssertNil(NbdURI(other), other)
        }
    }
}

/// An nbdkit in the foreground on a Unix socket; ready once it has written its pid file.
private final class NbdServer {
    let socket: String
    private let process = Process()

    init(socket: String, arguments: [String]) throws {
        self.socket = socket
        let pidFile = socket + ".pid"
        unlink(pidFile)
        // A killed server leaves its socket behind; a new one on the same path replaces it.
        unlink(socket)
        process.executableURL = URL(fileURLWithPath: "/usr/bin/nbdkit")
        process.arguments = ["-f", "--unix", socket, "--pidfile", pidFile] + arguments
        try process.run()
        while !FileManager.default.fileExists(atPath: pidFile) {
            guard process.isRunning else { throw CocoaError(.fileNoSuchFile) }
            usleep(10_000)
        }
    }

    func signal(_ number: Int32) {
        kill(process.processIdentifier, number)
    }

    func stop() {
        guard process.isRunning else { return }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }
}
