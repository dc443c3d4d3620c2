import Foundation
import Glibc
import UDMControl

/// Follows a merge through the origin's status line until the origin leaves snapshot-merge:
/// a progress bar with percent, rate and ETA on a terminal, plain lines otherwise.
struct MergeProgress {
    let origin: String
    let client: ClientOptions

    /// Sectors still to merge, or nil once the origin is no longer merging.
    private func remaining() -> UInt64? {
        let line = client.ask(ControlRequest(verb: .status, name: origin))
        let fields = line.split(separator: " ")
        guard fields.count >= 3, fields[2] == "snapshot-merge" else { return nil }
        if line.hasSuffix("Merge failed") { fail("merging into \(origin) failed; see the daemon log") }
        let numbers = fields.dropFirst(3).flatMap { $0.split(separator: "/") }.compactMap { UInt64($0) }
        guard numbers.count == 3 else { return nil }
        return numbers[0] - min(numbers[2], numbers[0])
    }

    func follow() {
        let terminal = isatty(1) == 1
        let start = Date()
        guard let first = remaining() else {
            print("\(origin): merge done")
            return
        }
        var lastPrint = Date.distantPast
        while let left = remaining() {
            let done = first - min(left, first)
            let fraction = first == 0 ? 1 : Double(done) / Double(first)
            let seconds = Date().timeIntervalSince(start)
            let rate = seconds > 0 ? Double(done) * 512 / seconds / 1_048_576 : 0
            let eta = rate > 0 ? Double(left) * 512 / 1_048_576 / rate : 0
            let text = String(format: "%5.1f%%  %7.1f MiB/s  ETA %@", fraction * 100, rate, clock(eta))
            if terminal {
                let width = 30
                let bar = String(repeating: "#", count: Int(fraction * Double(width))).padding(toLength: width, withPad: " ", startingAt: 0)
                FileHandle.standardOutput.write(Data("\r\(origin) [\(bar)] \(text)".utf8))
            } else if Date().timeIntervalSince(lastPrint) >= 2 {
                print("\(origin): merged \(text)")
                lastPrint = Date()
            }
            usleep(200_000)
        }
        if terminal { print() }
        print(String(format: "%@: merge done in %.1f s (%.1f MiB)", origin, Date().timeIntervalSince(start), Double(first) * 512 / 1_048_576))
    }

    private func clock(_ seconds: Double) -> String {
        let total = Int(seconds.rounded())
        return String(format: "%d:%02d", total / 60, total % 60)
    }
}
