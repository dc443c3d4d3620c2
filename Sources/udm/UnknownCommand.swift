import ArgumentParser

/// A word in verb position that names no verb: `udm crate x` is told "unknown command
/// 'crate'" with the nearest verb, where ArgumentParser would count unexpected arguments.
struct UnknownCommand: CustomStringConvertible {
    let word: String
    let path: String
    let suggestion: String?

    var description: String {
        "unknown command '\(word)'" + (suggestion.map { ", did you mean '\($0)'?" } ?? "; see `\(path) --help`")
    }

    /// Walks the verbs named by `arguments` from `root`; the first word that should be a verb
    /// and is not. Options end the walk: what follows them is the command's to judge.
    static func find(in arguments: [String], under root: ParsableCommand.Type) -> UnknownCommand? {
        var command = root
        var atRoot = true
        var path = root.configuration.commandName ?? "udm"
        for word in arguments {
            let subcommands = command.configuration.subcommands
            guard !subcommands.isEmpty, !word.hasPrefix("-") else { return nil }
            var names: [String: ParsableCommand.Type] = [:]
            for subcommand in subcommands {
                let configuration = subcommand.configuration
                for name in [configuration.commandName].compactMap({ $0 }) + configuration.aliases {
                    names[name] = subcommand
                }
            }
            if atRoot && word == "help" { return nil }
            guard let next = names[word] else {
                let nearest = names.keys.map { ($0, distance(word, $0)) }.min { ($0.1, $0.0) < ($1.1, $1.0) }
                let suggestion = nearest.flatMap { $0.1 <= max(1, word.count / 3) ? $0.0 : nil }
                return UnknownCommand(word: word, path: path, suggestion: suggestion)
            }
            command = next
            atRoot = false
            path += " " + word
        }
        return nil
    }

    /// Edit distance (insert, delete, substitute, swap of neighbours).
    static func distance(_ a: String, _ b: String) -> Int {
        let a = Array(a), b = Array(b)
        var rows = [[Int]](repeating: [Int](repeating: 0, count: b.count + 1), count: a.count + 1)
        for i in 0...a.count { rows[i][0] = i }
        for j in 0...b.count { rows[0][j] = j }
        for i in stride(from: 1, through: a.count, by: 1) {
            for j in stride(from: 1, through: b.count, by: 1) {
                let cost = a[i - 1] == b[j - 1] ? 0 : 1
                rows[i][j] = min(rows[i - 1][j] + 1, rows[i][j - 1] + 1, rows[i - 1][j - 1] + cost)
                if i > 1, j > 1, a[i - 1] == b[j - 2], a[i - 2] == b[j - 1] {
                    rows[i][j] = min(rows[i][j], rows[i - 2][j - 2] + 1)
                }
            }
        }
        return rows[a.count][b.count]
    }
}
