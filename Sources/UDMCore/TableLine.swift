/// One line of a table as dmsetup reads it: `<start> <length> <target type> <arguments…>`,
/// in 512-byte sectors; blank lines and `#` comments are skipped.
public struct TableLine: Equatable, Sendable {
    /// 1-based line number in the text the table came from.
    public let lineNumber: Int
    public let start: UInt64
    public let length: UInt64
    public let type: String
    public let arguments: [String]

    public init(lineNumber: Int, start: UInt64, length: UInt64, type: String, arguments: [String]) {
        self.lineNumber = lineNumber
        self.start = start
        self.length = length
        self.type = type
        self.arguments = arguments
    }

    /// Splits table text into lines; checks only the syntax of each line (numbers, fields
    /// present). `Table` checks how the lines fit together and builds the targets.
    public static func parse(_ text: String) throws(TableError) -> [TableLine] {
        var lines: [TableLine] = []
        var number = 0
        for raw in text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" }) {
            number += 1
            let content = raw.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
            let fields = content.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" }).map(String.init)
            if fields.isEmpty { continue }
            guard fields.count >= 3 else {
                let missing = fields.count == 1 ? "length" : "target type"
                throw TableError(line: number, field: missing, "missing; a line is <start> <length> <target type> <arguments>")
            }
            guard let start = UInt64(fields[0]) else {
                throw TableError(line: number, field: "start", "'\(fields[0])' is not a sector number")
            }
            guard let length = UInt64(fields[1]) else {
                throw TableError(line: number, field: "length", "'\(fields[1])' is not a sector count")
            }
            lines.append(TableLine(lineNumber: number, start: start, length: length,
                                   type: fields[2], arguments: Array(fields[3...])))
        }
        return lines
    }
}

/// A rejected table, naming where: printed as `line 2: length: must be greater than zero`.
public struct TableError: Error, Sendable, CustomStringConvertible {
    public let line: Int?
    public let field: String?
    public let message: String

    public init(line: Int?, field: String?, _ message: String) {
        self.line = line
        self.field = field
        self.message = message
    }

    public var description: String {
        var parts: [String] = []
        if let line { parts.append("line \(line)") }
        if let field { parts.append(field) }
        parts.append(message)
        return parts.joined(separator: ": ")
    }
}
