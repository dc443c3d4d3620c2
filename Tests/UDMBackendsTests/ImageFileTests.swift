import Glibc
import UDMBackends
import UDMCore
import UDMTargets
import UDMTestSupport
import XCTest

/// Image files under a striped disk: the pieces of a 1 MiB bio that are adjacent on a file go
/// out as one run (preadv/pwritev, or one bounced transfer for unaligned buffers); the bytes
/// land where the stripe mapping says, in every I/O mode.
final class ImageFileTests: XCTestCase {
    private let mebibyte = 1 << 20
    private var paths: [String] = []

    override func tearDown() {
        paths.forEach { unlink($0) }
    }

    private func image(bytes: Int) throws -> String {
        var template = Array("/var/tmp/udm-imagefile-XXXXXX".utf8CString)
        let fd = mkstemp(&template)
        XCTAssertGreaterThanOrEqual(fd, 0)
        XCTAssertEqual(ftruncate(fd, off_t(bytes)), 0)
        close(fd)
        let path = String(cString: template)
        paths.append(path)
        return path
    }

    private func stripedDisk(directIO: ImageFile.DirectIO) throws -> (MappedDevice, [String]) {
        let a = try image(bytes: 4 * mebibyte)
        let b = try image(bytes: 4 * mebibyte)
        let devices: [String: BlockDevice] = ["/a": try ImageFile(path: a, directIO: directIO),
                                              "/b": try ImageFile(path: b, directIO: directIO)]
        let table = try Table(lines: TableLine.parse("0 16384 striped 2 128 /a 0 /b 0"), registry: BuiltinTargets.registry,
                              resolver: NamedResolver(devices: devices), bioSetSize: 256)
        let device = MappedDevice(name: "s")
        device.load(table)
        try device.resume()
        return (device, [a, b])
    }

    /// Writes 1 MiB (chunk k filled with k + 1) at `offset` bytes into the disk's buffer
    /// `misalignment` bytes into an allocation, reads it back, and checks both files.
    private func roundTrip(directIO: ImageFile.DirectIO, misalignment: Int) throws {
        let (device, files) = try stripedDisk(directIO: directIO)
        let memory = UnsafeMutableRawPointer.allocate(byteCount: mebibyte + 4096, alignment: 4096)
        defer { memory.deallocate() }
        let data = memory + misalignment
        for chunk in 0..<16 {
            (data + chunk << 16).initializeMemory(as: UInt8.self, repeating: UInt8(chunk + 1), count: 1 << 16)
        }
        let sector: UInt64 = 2048
        XCTAssertEqual(BioWaiter().run(Bio(op: .write, sector: sector, sectors: 2048, buffer: data), on: device), .ok)
        for (stripe, path) in files.enumerated() {
            let fd = open(path, O_RDONLY)
            defer { close(fd) }
            for n in 0..<8 {
                var byte: UInt8 = 0
                // Chunk n of this stripe's share starts at 512 KiB (the bio's first stripe row) + 64 KiB * n.
                XCTAssertEqual(pread(fd, &byte, 1, off_t((512 + 64 * n) * 1024 + 65535)), 1)
                XCTAssertEqual(byte, UInt8(2 * n + stripe + 1), "\(directIO) +\(misalignment): stripe \(stripe) chunk \(n)")
            }
        }
        let back = UnsafeMutableRawPointer.allocate(byteCount: mebibyte + 4096, alignment: 4096)
        defer { back.deallocate() }
        XCTAssertEqual(BioWaiter().run(Bio(op: .read, sector: sector, sectors: 2048, buffer: back + misalignment), on: device), .ok)
        XCTAssertEqual(memcmp(data, back + misalignment, mebibyte), 0, "\(directIO) +\(misalignment): read back")
    }

    func testAlignedBuffersWithDirectIO() throws { try roundTrip(directIO: .auto, misalignment: 0) }
    func testUnalignedBuffersAreBouncedAsOneTransfer() throws { try roundTrip(directIO: .auto, misalignment: 80) }
    func testBufferedIO() throws { try roundTrip(directIO: .off, misalignment: 80) }
}
