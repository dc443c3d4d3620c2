import Synchronization
import UDMCore

/// `striped <#stripes> <chunk size> [<dev> <offset>]+`: the target's sectors are dealt out
/// round-robin, `chunk size` sectors at a time, over the stripe devices (dm-stripe.c).
///
/// Rules as dm's: exactly 2 + 2×stripes arguments; at least one stripe; chunk size ≥ 1 sector
/// (any size, a shift when it is a power of two); target length divisible by the stripe count
/// and length/stripes divisible by the chunk size.
/// Table: `<#stripes> <chunk> <dev> <offset>…`. Status: `<#stripes> <dev>… 1 <A|D per stripe>`,
/// D once a stripe's device has reported an I/O error (on any stripe that uses it).
/// Reads and writes are cut at chunk boundaries. A flush goes to every stripe device; a discard
/// or write-zeroes becomes one clone per stripe covering exactly that stripe's share of the range.
public final class StripedTarget: Target {
    public static let name = "striped"
    public static let version = (1, 7, 0)

    private struct Stripe {
        let device: BlockDevice
        let name: String
        let offset: UInt64
    }

    private let context: TargetContext
    private let stripes: [Stripe]
    private let chunk: UInt64
    /// log2(chunk) when chunk is a power of two.
    private let chunkShift: UInt64?
    /// Errors seen per stripe; a stripe with any is shown as `D`.
    private let errors: Mutex<[Int]>

    public init(arguments: [String], context: TargetContext) throws {
        guard arguments.count >= 2 else {
            throw TargetError("not enough arguments: expected <#stripes> <chunk size> [<dev> <offset>]+")
        }
        guard let count = Int(arguments[0]), count >= 1 else {
            throw TargetError("invalid stripe count '\(arguments[0])'", argument: 1)
        }
        guard let chunk = UInt64(arguments[1]), chunk >= 1 else {
            throw TargetError("invalid chunk size '\(arguments[1])'", argument: 2)
        }
        // A stripe count from a client must not overflow the arithmetic (it crashed the daemon).
        guard count <= (Int.max - 2) / 2, arguments.count == 2 + 2 * count else {
            let needed = count <= (Int.max - 2) / 2 ? "\(2 + 2 * count)" : "more than \(Int.max)"
            throw TargetError("\(count) stripes need \(needed) arguments, got \(arguments.count)")
        }
        guard context.length % UInt64(count) == 0 else {
            throw TargetError("target length \(context.length) is not divisible by the number of stripes \(count)")
        }
        let perStripe = context.length / UInt64(count)
        guard perStripe % chunk == 0 else {
            throw TargetError("target length per stripe \(perStripe) is not divisible by the chunk size \(chunk)")
        }
        var stripes: [Stripe] = []
        for index in 0..<count {
            let argument = 3 + 2 * index
            let offset = try parseSectors(arguments[argument], argument: argument + 1, what: "stripe \(index) offset")
            let device = try context.openDevice(arguments[argument - 1], argument: argument, offset: offset, sectors: perStripe)
            stripes.append(Stripe(device: device, name: arguments[argument - 1], offset: offset))
        }
        self.context = context
        self.stripes = stripes
        self.chunk = chunk
        self.chunkShift = chunk & (chunk - 1) == 0 ? UInt64(chunk.trailingZeroBitCount) : nil
        self.errors = Mutex(Array(repeating: 0, count: count))
    }

    public var maxIOLength: UInt64 { chunk }
    public var flushBios: Int { stripes.count }
    public var discardBios: Int { stripes.count }
    public var writeZeroesBios: Int { stripes.count }
    public var discardZeroes: Bool { stripes.allSatisfy { $0.device.discardZeroes } }

    /// Target-relative sector → (stripe, sector on that stripe counted from its offset).
    @inline(__always)
    func locate(_ sector: UInt64) -> (stripe: Int, sector: UInt64) {
        let chunkIndex: UInt64
        let within: UInt64
        if let shift = chunkShift {
            chunkIndex = sector >> shift
            within = sector & (chunk - 1)
        } else {
            chunkIndex = sector / chunk
            within = sector % chunk
        }
        let count = UInt64(stripes.count)
        return (Int(chunkIndex % count), (chunkIndex / count) * chunk + within)
    }

    /// Where target-relative `sector` falls as a boundary on `stripe`: on its own stripe, where
    /// it maps; on a stripe before it, after that stripe's chunk of the same row; on a stripe
    /// after it, before that chunk.
    @inline(__always)
    func boundary(_ sector: UInt64, on stripe: Int) -> UInt64 {
        let (owner, mapped) = locate(sector)
        if owner == stripe { return mapped }
        let rowStart = mapped - mapped % chunk
        return stripe < owner ? rowStart + chunk : rowStart
    }

    public func map(_ bio: Bio) -> MapResult {
        switch bio.op {
        case .flush:
            return .remapped(to: stripes[bio.duplicateIndex].device)
        case .discard, .writeZeroes:
            let index = bio.duplicateIndex
            let start = context.offset(of: bio.sector)
            let begin = boundary(start, on: index)
            let end = boundary(start + bio.sectors, on: index)
            guard begin < end else {
                bio.end(.ok)
                return .submitted
            }
            bio.sector = stripes[index].offset + begin
            bio.sectors = end - begin
            return .remapped(to: stripes[index].device)
        case .read, .write:
            let (index, sector) = locate(context.offset(of: bio.sector))
            bio.sector = stripes[index].offset + sector
            return .remapped(to: stripes[index].device)
        }
    }

    /// An error counts against the device, as dm counts it: every stripe on that device is
    /// marked, since the others share whatever failed.
    public func endIO(_ bio: Bio) {
        guard !bio.status.isOK, bio.status != .notSupported, let failed = bio.device else { return }
        errors.withLock { errors in
            for (index, stripe) in stripes.enumerated() where stripe.device === failed {
                errors[index] += 1
            }
        }
    }

    public func status(_ kind: StatusKind) -> String {
        switch kind {
        case .table:
            return "\(stripes.count) \(chunk)" + stripes.map { " \($0.name) \($0.offset)" }.joined()
        case .info:
            let health = errors.withLock { $0.map { $0 > 0 ? "D" : "A" }.joined() }
            return "\(stripes.count) " + stripes.map { "\($0.name) " }.joined() + "1 \(health)"
        }
    }
}
