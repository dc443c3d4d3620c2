/// dmsetup's command line, parsed as its getopt_long does: options anywhere among the words,
/// `--name=value` or `--name value`, short flags clustered (`-fv`). An option dmsetup has and
/// udm does not, and one dmsetup does not have, are each named in one line.
struct DmsetupArguments {
    var force = false
    var retry = false
    var lockfs = true
    var columns = false
    var noHeadings = false
    var table: String?
    var target: String?
    var fields: String?
    var separator: String?
    var socket: String?
    var help = false
    /// The verb and its words.
    var words: [String] = []

    struct Invalid: Error, CustomStringConvertible {
        let description: String
    }

    /// Flags accepted and not needed here: udev synchronisation (udm makes its nodes itself),
    /// open counting, verbosity, flushing on suspend (udm's suspend waits for I/O in flight
    /// and never requeues it), the confirmation prompt.
    private static let ignoredFlags: Set<String> = ["--noudevsync", "--noudevrules", "--verifyudev", "--noopencount",
                                                    "--noflush", "--verbose", "--yes", "--checks"]
    private static let shortIgnored: Set<Character> = ["v", "y"]
    /// dmsetup's options udm does not implement.
    private static let unsupported: Set<String> = [
        "--inactive", "--readonly", "--uuid", "--major", "--minor", "--uid", "--gid", "--mode", "--notable",
        "--readahead", "--udevcookie", "--sort", "--select", "--nameprefixes", "--manglename", "--deferred",
        "--concise", "--exec", "--tree", "--showkeys", "--addnodeonresume", "--addnodeoncreate", "--setuuid",
        "--unbuffered", "--unquoted", "--rows", "--interval", "--count", "--timestamp",
    ]
    private static let shortUnsupported: [Character: String] = [
        "r": "--readonly", "u": "--uuid", "j": "--major", "m": "--minor", "U": "--uid", "G": "--gid",
        "M": "--mode", "n": "--notable", "O": "--sort", "S": "--select",
    ]

    init(_ arguments: [String]) throws {
        var rest = arguments[...]
        var onlyWords = false
        while let word = rest.popFirst() {
            if onlyWords || word == "-" || !word.hasPrefix("-") {
                words.append(word)
            } else if word == "--" {
                onlyWords = true
            } else if word.hasPrefix("--") {
                try takeLong(word, &rest)
            } else {
                try takeShort(word, &rest)
            }
        }
    }

    private mutating func takeLong(_ word: String, _ rest: inout ArraySlice<String>) throws {
        let (name, inline) = word.firstIndex(of: "=").map { (String(word[..<$0]), String(word[word.index(after: $0)...])) }
            ?? (word, nil)
        func value() throws -> String {
            if let inline { return inline }
            guard let next = rest.popFirst() else { throw Invalid(description: "option '\(name)' requires an argument") }
            return next
        }
        switch name {
        case "--force": force = true
        case "--retry": retry = true
        case "--nolockfs": lockfs = false
        case "--columns": columns = true
        case "--noheadings": noHeadings = true
        case "--help": help = true
        case "--version": words = ["version"]
        case "--table": table = try value()
        case "--target": target = try value()
        case "--options": fields = try value()
        case "--separator": separator = try value()
        case "--socket": socket = try value()
        case _ where Self.ignoredFlags.contains(name): break
        case _ where Self.unsupported.contains(name):
            throw Invalid(description: "option '\(name)' is not supported by udm's dmsetup")
        default:
            throw Invalid(description: "unrecognized option '\(name)'")
        }
        if inline != nil && !["--table", "--target", "--options", "--separator", "--socket"].contains(name) {
            throw Invalid(description: "option '\(name)' doesn't allow an argument")
        }
    }

    private mutating func takeShort(_ word: String, _ rest: inout ArraySlice<String>) throws {
        var letters = word.dropFirst()
        while let letter = letters.popFirst() {
            switch letter {
            case "f": force = true
            case "c", "C": columns = true
            case "h": help = true
            case "o":
                if !letters.isEmpty {
                    fields = String(letters)
                    return
                }
                guard let next = rest.popFirst() else { throw Invalid(description: "option requires an argument -- 'o'") }
                fields = next
            case _ where Self.shortIgnored.contains(letter): break
            case _ where Self.shortUnsupported[letter] != nil:
                throw Invalid(description: "option '-\(letter)' (\(Self.shortUnsupported[letter]!)) is not supported by udm's dmsetup")
            default:
                throw Invalid(description: "invalid option -- '\(letter)'")
            }
        }
    }
}
