import ArgumentParser
import Histogram

#if canImport(Glibc)
import Glibc
#endif

/// The table, the JSON and the percentile plot of a bench.
enum BenchReport {
    static func table(_ results: BenchResults) -> String {
        let header =
            ["system", "scenario", "msgs/s"] + BenchFormat.percentiles.map(\.label) + ["max", "shmring ×", "notes"]
        var lines: [[String]] = [header]
        for row in results.rows {
            var cells = [row.item.system.rawValue, row.item.label]
            if let failure = row.failure, row.succeeded == 0 {
                lines.append(cells + Array(repeating: "", count: 8) + ["failed: \(failure)"])
                continue
            }
            let rate = row.item.scenario == .fanout ? row.deliveriesPerSecond : row.messagesPerSecond
            cells.append(rate.map { BenchFormat.count($0) + (row.item.scenario == .fanout ? " dl" : "") } ?? "-")
            if let histogram = row.latencies {
                for percentile in BenchFormat.percentiles {
                    cells.append(
                        BenchFormat.shown(percentile.value, of: histogram.totalCount)
                            ? BenchFormat.nanoseconds(histogram.valueAtPercentile(percentile.value)) : "")
                }
                cells.append(BenchFormat.nanoseconds(histogram.max))
            } else {
                cells += Array(repeating: "-", count: 6)
            }
            cells.append(ratioText(row))
            var notes: [String] = []
            if row.item.scenario.closedLoop {
                notes.append(row.item.scenario == .fanout ? "to all, closed loop" : "closed loop")
            }
            if let slept = row.sleptShare { notes.append("slept \(BenchFormat.fixed(slept * 100, 0)) %") }
            if let histogram = row.latencies {
                notes.append("\(BenchFormat.count(Double(histogram.totalCount))) samples")
            }
            if row.capped > 0 { notes.append("sample space full before the end in \(row.capped) round(s)") }
            if let failure = row.failure { notes.append("\(results.rounds - row.succeeded) failed: \(failure)") }
            cells.append(notes.joined(separator: "; "))
            lines.append(cells)
        }
        var widths = header.map { _ in 0 }
        for line in lines { for (index, cell) in line.enumerated() { widths[index] = max(widths[index], cell.count) } }
        let right = Set(2...9)
        var text = ""
        for (number, line) in lines.enumerated() {
            let cells = line.enumerated().map { index, cell in
                let pad = String(repeating: " ", count: widths[index] - cell.count)
                return right.contains(index) ? pad + cell : cell + pad
            }
            text += cells.joined(separator: "  ").trimmingTrailingSpaces + "\n"
            if number == 0 {
                text += String(repeating: "-", count: widths.reduce(0, +) + 2 * (widths.count - 1)) + "\n"
            }
        }
        text += """
            msgs/s: median of the rounds (fanout: deliveries to all consumers). Latencies: HDR histogram of every \
            round; rtt-* are round trips, latency is one way from each message's intended send time, fanout is \
            the time until every consumer has a message; a percentile is left blank with fewer than 100 samples \
            beyond it. shmring ×: how many times ShmRing did better than the row in the same round (throughput \
            ratio, or the ratio of the p50s), median of the rounds (min-max).
            """
        return text
    }

    static func ratioText(_ row: BenchResults.Row) -> String {
        if row.item.system == .shmring { return "1.00" }
        guard let median = BenchFormat.median(row.advantages) else { return "-" }
        var text = ratio(median)
        if row.advantages.count > 1 { text += " (\(ratio(row.advantages.min()!))-\(ratio(row.advantages.max()!)))" }
        return text
    }

    /// Two decimals below 10, one below 100, none above.
    static func ratio(_ value: Double) -> String { BenchFormat.fixed(value, value < 10 ? 2 : value < 100 ? 1 : 0) }

    // MARK: JSON

    static func json(_ results: BenchResults, machine: BenchMachine, settings: Bench) -> String {
        var runs: [String] = []
        for row in results.rows {
            var fields: [(String, String)] = [
                ("system", jsonString(row.item.system.rawValue)), ("scenario", jsonString(row.item.scenario.rawValue)),
                ("message_bytes", "\(row.item.size)"), ("consumers", "\(row.item.consumers)"),
            ]
            if let rate = row.item.rate { fields.append(("rate", "\(rate)")) }
            if row.item.batch > 1 { fields.append(("batch", "\(row.item.batch)")) }
            if let value = row.messagesPerSecond { fields.append(("msgs_per_s", number(value))) }
            if let value = row.deliveriesPerSecond { fields.append(("deliveries_per_s", number(value))) }
            if let histogram = row.latencies {
                var latency: [(String, String)] = []
                for percentile in BenchFormat.percentiles
                where BenchFormat.shown(percentile.value, of: histogram.totalCount) {
                    latency.append((percentile.key, "\(histogram.valueAtPercentile(percentile.value))"))
                }
                latency.append(("max", "\(histogram.max)"))
                fields.append(("latency_ns", object(latency)))
                fields.append(("samples", "\(histogram.totalCount)"))
            }
            if row.item.scenario.closedLoop { fields.append(("closed_loop", "true")) }
            if let slept = row.sleptShare { fields.append(("slept_share", number(slept, digits: 3))) }
            if row.item.system != .shmring, let median = BenchFormat.median(row.advantages) {
                fields.append(
                    (
                        "shmring_advantage",
                        object([
                            ("median", number(median, digits: 3)), ("min", number(row.advantages.min()!, digits: 3)),
                            ("max", number(row.advantages.max()!, digits: 3)),
                        ])
                    ))
            }
            fields.append(("rounds", "\(row.succeeded)"))
            if let failure = row.failure { fields.append(("failure", jsonString(failure))) }
            runs.append(object(fields))
        }
        let machineFields: [(String, String)] = [
            ("cpu", jsonString(machine.cpu)), ("cores", "\(machine.cores)"), ("kernel", jsonString(machine.kernel)),
            ("swift", jsonString(machine.swift)), ("placement", jsonString(machine.placementBefore.0)),
            ("placement_after", jsonString(machine.placementAfter.0)),
            ("placement_rtt_ns", "[\(machine.placementBefore.1), \(machine.placementAfter.1)]"),
            ("clocksource", jsonString(machine.clocksource)),
            ("timestamps", jsonString(machine.usesTSC ? "tsc" : "clock_monotonic")),
            ("tsc_ghz", number(machine.ticksPerNanosecond, digits: 4)),
        ]
        let settingsFields: [(String, String)] = [
            ("duration_ns", "\(settings.duration.nanoseconds)"), ("rounds", "\(settings.rounds)"),
            ("cpus", "[\(settings.chosenCPUs.0), \(settings.chosenCPUs.1)]"),
        ]
        return "{\"machine\": \(object(machineFields)), \"settings\": \(object(settingsFields)), \"runs\": [\n  "
            + runs.joined(separator: ",\n  ") + "\n]}\n"
    }

    static func object(_ fields: [(String, String)]) -> String {
        "{" + fields.map { "\(jsonString($0.0)): \($0.1)" }.joined(separator: ", ") + "}"
    }

    static func number(_ value: Double, digits: Int = 0) -> String {
        value.isFinite ? BenchFormat.fixed(value, digits) : "null"
    }

    // MARK: SVG

    /// One panel per latency row group (scenario, rate, batch), one series per system: latency on
    /// a log axis against the percentile on the usual log axis (90, 99, 99.9, ... equally spaced).
    static func svg(_ results: BenchResults) -> String {
        let rows = results.rows.filter { $0.latencies != nil }
        var panels: [(String, [BenchResults.Row])] = []
        for row in rows {
            let title = row.item.label
            if let index = panels.firstIndex(where: { $0.0 == title }) {
                panels[index].1.append(row)
            } else {
                panels.append((title, [row]))
            }
        }
        let width = 760.0, panelHeight = 300.0, left = 80.0, right = 170.0, top = 40.0, bottom = 50.0
        let height = max(1, Double(panels.count)) * panelHeight
        var svg = """
            <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" viewBox="0 0 \(Int(width)) \(Int(height))" font-family="sans-serif" font-size="12">
            <rect width="100%" height="100%" fill="white"/>

            """
        if panels.isEmpty {
            svg += "<text x=\"20\" y=\"40\">No latency was measured in this run.</text>\n"
        }
        let colors = [
            "#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
            "#bcbd22", "#393b79", "#637939",
        ]
        for (number, panel) in panels.enumerated() {
            let y0 = Double(number) * panelHeight
            let plotWidth = width - left - right, plotHeight = panelHeight - top - bottom
            // x: -log10(1 - p), from 0 (p0) to 5 (p99.999); y: log10(ns).
            let maxX = 5.0
            let values = panel.1.compactMap { $0.latencies }.flatMap { [max(1, $0.min), max(1, $0.max)] }
            let low = floor(log10(Double(values.min() ?? 1))),
                high = max(low + 1, ceil(log10(Double(values.max() ?? 10))))
            func x(_ value: Double) -> Double { left + plotWidth * min(value, maxX) / maxX }
            func y(_ ns: Double) -> Double { y0 + top + plotHeight * (1 - (log10(max(ns, 1)) - low) / (high - low)) }
            svg +=
                "<text x=\"\(left)\" y=\"\(y0 + 22)\" font-size=\"14\" font-weight=\"bold\">\(escape(panel.0))</text>\n"
            svg +=
                "<rect x=\"\(left)\" y=\"\(y0 + top)\" width=\"\(plotWidth)\" height=\"\(plotHeight)\" fill=\"none\" stroke=\"#444\"/>\n"
            for (tick, label) in ["0", "90", "99", "99.9", "99.99", "99.999"].enumerated() {
                let position = x(Double(tick))
                svg +=
                    "<line x1=\"\(position)\" y1=\"\(y0 + top)\" x2=\"\(position)\" y2=\"\(y0 + top + plotHeight)\" stroke=\"#ddd\"/>\n"
                svg +=
                    "<text x=\"\(position)\" y=\"\(y0 + top + plotHeight + 16)\" text-anchor=\"middle\">\(label)%</text>\n"
            }
            svg +=
                "<text x=\"\(left + plotWidth / 2)\" y=\"\(y0 + panelHeight - 10)\" text-anchor=\"middle\">percentile (log scale)</text>\n"
            var decade = low
            while decade <= high {
                let position = y(pow(10, decade))
                svg +=
                    "<line x1=\"\(left)\" y1=\"\(position)\" x2=\"\(left + plotWidth)\" y2=\"\(position)\" stroke=\"#ddd\"/>\n"
                svg +=
                    "<text x=\"\(left - 6)\" y=\"\(position + 4)\" text-anchor=\"end\">\(BenchFormat.nanoseconds(UInt64(pow(10, decade))))</text>\n"
                decade += 1
            }
            svg +=
                "<text transform=\"translate(16 \(y0 + top + plotHeight / 2)) rotate(-90)\" text-anchor=\"middle\">latency (log scale)</text>\n"
            for (index, row) in panel.1.enumerated() {
                guard let histogram = row.latencies else { continue }
                let color = colors[index % colors.count]
                var points: [String] = []
                // Up to where fewer than 10 samples lie beyond, in steps of a tenth of a nine.
                var step = 0.0
                while step <= maxX * 10 {
                    let percentile = 100 * (1 - pow(10, -step / 10))
                    guard Double(histogram.totalCount) * (100 - percentile) / 100 >= 10 else { break }
                    let value = Double(histogram.valueAtPercentile(percentile))
                    points.append("\(BenchFormat.fixed(x(step / 10), 1)),\(BenchFormat.fixed(y(value), 1))")
                    step += 1
                }
                svg +=
                    "<polyline class=\"series\" data-system=\"\(row.item.system.rawValue)\" fill=\"none\" stroke=\"\(color)\" stroke-width=\"2\" points=\"\(points.joined(separator: " "))\"/>\n"
                let legendY = y0 + top + 14 + Double(index) * 18
                svg +=
                    "<line x1=\"\(width - right + 12)\" y1=\"\(legendY - 4)\" x2=\"\(width - right + 36)\" y2=\"\(legendY - 4)\" stroke=\"\(color)\" stroke-width=\"3\"/>\n"
                svg += "<text x=\"\(width - right + 42)\" y=\"\(legendY)\">\(escape(row.item.system.rawValue))</text>\n"
            }
        }
        return svg + "</svg>\n"
    }

    static func escape(_ text: String) -> String {
        text.replacingAll("&", "&amp;").replacingAll("<", "&lt;").replacingAll(">", "&gt;")
    }

    static func write(_ text: String, to path: String) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw CommandFailure("cannot write \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var text = text
        let failed = text.withUTF8 { bytes -> Bool in
            var offset = 0
            while offset < bytes.count {
                let count = Glibc.write(fd, bytes.baseAddress! + offset, bytes.count - offset)
                if count < 0 && errno == EINTR { continue }
                if count <= 0 { return true }
                offset += count
            }
            return false
        }
        if failed { throw CommandFailure("cannot write \(path): \(String(cString: strerror(errno)))") }
    }
}

extension String {
    var trimmingTrailingSpaces: String {
        var text = self
        while text.last == " " { text.removeLast() }
        return text
    }

    func replacingAll(_ target: Character, _ replacement: String) -> String {
        var result = ""
        for character in self { if character == target { result += replacement } else { result.append(character) } }
        return result
    }
}
