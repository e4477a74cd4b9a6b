import ArgumentParser

/// A size in bytes given as `65536`, `64KiB`, `64K`, `16MiB`, `1GiB` (binary units) or `64KB`,
/// `16MB` (decimal units).
struct ByteSize: ExpressibleByArgument, Equatable, CustomStringConvertible {
    var bytes: Int

    init(bytes: Int) { self.bytes = bytes }

    init?(argument: String) {
        let units: [(String, Int)] = [
            ("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30), ("TiB", 1 << 40),
            ("KB", 1000), ("MB", 1_000_000), ("GB", 1_000_000_000),
            ("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30), ("B", 1),
        ]
        var number = Substring(argument)
        var multiplier = 1
        for (suffix, value) in units where argument.hasSuffix(suffix) {
            number = argument.dropLast(suffix.count)
            multiplier = value
            break
        }
        guard !number.isEmpty, number.allSatisfy(\.isNumber), let value = Int(number) else { return nil }
        let (total, overflow) = value.multipliedReportingOverflow(by: multiplier)
        guard !overflow else { return nil }
        bytes = total
    }

    var description: String {
        for (suffix, value) in [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)]
        where bytes >= value && bytes % value == 0 {
            return "\(bytes / value)\(suffix)"
        }
        return "\(bytes)"
    }

    static var defaultCompletionKind: CompletionKind { .default }
}
