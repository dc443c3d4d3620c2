import Foundation
import Synchronization
import UDMCore
import UDMTargets
import UDMTestSupport
import XCTest

/// Many threads issuing discards, flushes and writes at once to a striped disk whose bioset is
/// as small as allowed (and one of 16, where a pass maps several pieces), over images that
/// take runs from the plug. With the NOWAIT-then-mutex discipline every run completes; with the
/// naive policy (take the clones one by one, waiting on each) two threads end up each holding
/// part of a set, and the watchdog that fails a stalled run catches it.
final class AllocationStressTests: XCTestCase {
    enum Outcome: Equatable { case completed(operations: Int), stalled(afterOperations: Int) }

    /// A striped disk over `stripes` devices with chunk 8 and pool `poolSize` (raised by the
    /// table to `stripes`). `stacked`: each stripe is a linear disk over an image, with a pool of
    /// its own. Runs `threads` threads for `duration` seconds; stalled if no operation finishes
    /// for `stallLimit` seconds.
    func stress(policy: BioSet.ManyPolicy, poolSize: Int, stripes: Int, stacked: Bool, threads: Int = 8,
                duration: Double = 0.4, stallLimit: Double = 5) throws -> Outcome {
        let perStripe: UInt64 = 512
        var lowers: [String: BlockDevice] = [:]
        for index in 0..<stripes {
            let image = MemoryDevice(name: "img\(index)", sectors: perStripe, recording: false, maxRunBytes: 1 << 20)
            if stacked {
                let linear = MappedDevice(name: "linear\(index)", manyPolicy: policy)
                linear.load(try Table(lines: TableLine.parse("0 \(perStripe) linear img 0"), registry: BuiltinTargets.registry,
                                      resolver: NamedResolver(devices: ["img": image]), bioSetSize: poolSize))
                try linear.resume()
                lowers["d\(index)"] = linear
            } else {
                lowers["d\(index)"] = image
            }
        }
        let size = perStripe * UInt64(stripes)
        let arguments = (0..<stripes).map { "d\($0) 0" }.joined(separator: " ")
        let top = MappedDevice(name: "top", manyPolicy: policy)
        top.load(try Table(lines: TableLine.parse("0 \(size) striped \(stripes) 8 \(arguments)"), registry: BuiltinTargets.registry,
                           resolver: NamedResolver(devices: lowers), bioSetSize: poolSize))
        try top.resume()

        let operations = Atomic<Int>(0)
        let running = Atomic<Int>(threads)
        let deadline = Date().addingTimeInterval(duration)
        for seed in 0..<threads {
            Thread.detachNewThread {
                var random = SystemRandomNumberGenerator()
                let data = UnsafeMutableRawPointer.allocate(byteCount: 64 * 512, alignment: 4096)
                let waiter = BioWaiter()
                while Date() < deadline {
                    let sector = UInt64.random(in: 0..<(size - 64), using: &random)
                    let sectors = UInt64.random(in: 1...64, using: &random)
                    let bio: Bio
                    switch (Int.random(in: 0..<4, using: &random) + seed) % 4 {
                    case 0: bio = Bio(op: .discard, sector: sector, sectors: sectors)
                    case 1: bio = Bio(op: .flush)
                    case 2: bio = Bio(op: .writeZeroes, sector: sector, sectors: sectors)
                    default: bio = Bio(op: .write, sector: sector, sectors: sectors, buffer: data)
                    }
                    waiter.run(bio, on: top)
                    operations.add(1, ordering: .relaxed)
                }
                data.deallocate()
                running.subtract(1, ordering: .relaxed)
            }
        }
        var last = -1
        var lastChange = Date()
        while running.load(ordering: .relaxed) > 0 {
            let now = operations.load(ordering: .relaxed)
            if now != last {
                last = now
                lastChange = Date()
            } else if Date().timeIntervalSince(lastChange) > stallLimit {
                // The stuck threads stay blocked; the test process ends around them.
                return .stalled(afterOperations: now)
            }
            usleep(10_000)
        }
        return .completed(operations: operations.load(ordering: .relaxed))
    }

    func testDisciplineNeverStallsAcrossPoolSizesStripesAndStacking() throws {
        for stacked in [false, true] {
            for stripes in [2, 3, 8] {
                for poolSize in [1, 2, 3, 4, 16] {
                    let outcome = try stress(policy: .noWaitThenMutex, poolSize: poolSize, stripes: stripes, stacked: stacked)
                    guard case .completed(let operations) = outcome else {
                        return XCTFail("stalled: pool \(poolSize), \(stripes) stripes, stacked \(stacked): \(outcome)")
                    }
                    XCTAssertGreaterThan(operations, 0)
                    print("stress: discipline, pool \(poolSize), \(stripes) stripes, stacked \(stacked): \(operations) operations completed")
                }
            }
        }
    }

    /// Shows that the watchdog above can catch the deadlock the discipline prevents.
    func testWatchdogCatchesTheNaivePolicyDeadlock() throws {
        let start = Date()
        let outcome = try stress(policy: .naive, poolSize: 1, stripes: 8, stacked: false, threads: 16,
                                 duration: 30, stallLimit: 3)
        guard case .stalled(let operations) = outcome else {
            return XCTFail("the naive policy ran for 30 s without a stall: \(outcome)")
        }
        let seconds = Date().timeIntervalSince(start) - 3
        print("stress: naive policy stalled after \(operations) operations, \(String(format: "%.2f", seconds)) s (+3 s watchdog)")
    }
}
