import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

extension MultiProcess {
    /// `shmring bench` (docs/benchmarking.md), run as a user would, with short durations: the
    /// shape of its JSON and plot, that coordinated omission is not hidden, and its refusals.
    @Suite struct BenchTests {
        static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().path

        func bench(_ arguments: [String], timeout: Duration = .seconds(300)) throws -> (
            ChildProcess.Status, String, String
        ) {
            let process = try ChildProcess(ShmRingExecutable.path, ["bench"] + arguments)
            let status = process.wait(timeout: timeout)
            return (status, process.standardOutput, process.standardError)
        }

        func temporaryPath(_ name: String) -> String {
            NSTemporaryDirectory() + "shmring-bench-test-\(getpid())-\(name)"
        }

        func runs(_ path: String) throws -> (machine: [String: Any], runs: [[String: Any]]) {
            let data = try Data(contentsOf: URL(fileURLWithPath: path))
            let object = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
            return (try #require(object["machine"] as? [String: Any]), try #require(object["runs"] as? [[String: Any]]))
        }

        /// Every scenario and built-in system, for 20 ms each: the JSON has the documented shape
        /// (keys that do not apply left out) and the SVG one series per system with a log axis.
        @Test func aTinyRunWritesTheJSONAndThePlot() throws {
            let json = temporaryPath("tiny.json")
            let svg = temporaryPath("tiny.svg")
            defer {
                unlink(json)
                unlink(svg)
            }
            let (status, output, errors) = try bench([
                "--duration", "20ms", "--repeat", "1", "--rates", "20k", "--consumers", "2", "--batch", "8", "--json",
                json,
                "--plot", svg,
            ])
            #expect(status == .exited(0), "\(output)\n\(errors)")
            #expect(output.contains("plot: \(svg)") && output.contains("JSON: \(json)"), "\(output)")
            let (machine, rows) = try runs(json)
            for key in ["cpu", "kernel", "swift", "placement", "clocksource"] {
                #expect(machine[key] is String, "\(key)")
            }
            #expect((machine["cores"] as? Int ?? 0) >= 1)
            #expect(["near", "far"].contains(machine["placement"] as? String ?? ""))
            let builtIn = ["shmring", "c-twin", "plain-ring", "line-floor", "pipe", "unix-socket", "eventfd", "futex"]
            let scenarios = ["throughput", "rtt-spin", "rtt-block", "fanout", "latency"]
            var seen = Set<String>()
            for row in rows {
                let system = try #require(row["system"] as? String)
                let scenario = try #require(row["scenario"] as? String)
                seen.insert(system)
                #expect(builtIn.contains(system) && scenarios.contains(scenario), "\(row)")
                #expect(row["message_bytes"] as? Int == 64, "\(row)")
                #expect(row["failure"] == nil, "\(system) \(scenario): \(row["failure"] ?? "")")
                let latency = row["latency_ns"] as? [String: Int]
                switch scenario {
                case "throughput":
                    #expect((row["msgs_per_s"] as? Double ?? 0) > 0, "\(row)")
                    #expect(latency == nil && row["rate"] == nil && row["deliveries_per_s"] == nil, "\(row)")
                case "fanout":
                    #expect(row["consumers"] as? Int == 2, "\(row)")
                    #expect((row["deliveries_per_s"] as? Double ?? 0) > 0 && row["msgs_per_s"] == nil, "\(row)")
                    #expect((latency?["max"] ?? 0) > 0, "\(row)")
                case "latency":
                    #expect(row["rate"] as? Int == 20_000, "\(row)")
                    #expect((latency?["p50"] ?? 0) > 0 && (latency?["max"] ?? 0) >= (latency?["p50"] ?? 0), "\(row)")
                default:
                    #expect((latency?["max"] ?? 0) > 0, "\(row)")
                    #expect(row["msgs_per_s"] == nil && row["rate"] == nil, "\(row)")
                }
                // A percentile appears exactly when at least 100 samples lie beyond it.
                if let latency {
                    let samples = try #require(row["samples"] as? Int)
                    for (key, denominator) in [("p50", 2), ("p90", 10), ("p99", 100), ("p999", 1000), ("p9999", 10000)]
                    {
                        #expect((latency[key] != nil) == (samples >= 100 * denominator), "\(key): \(row)")
                    }
                }
            }
            #expect(seen == Set(builtIn))
            #expect(rows.contains { $0["batch"] as? Int == 8 && $0["system"] as? String == "shmring" })
            let plot = try String(contentsOfFile: svg, encoding: .utf8)
            #expect(plot.hasPrefix("<svg"))
            for system in builtIn {
                let latencyRows = rows.filter { $0["system"] as? String == system && $0["latency_ns"] != nil }
                #expect(
                    plot.components(separatedBy: "data-system=\"\(system)\"").count - 1 == latencyRows.count,
                    "one series per system and panel: \(system)")
            }
            #expect(plot.contains(">99.9%<") && plot.contains(">99.99%<") && plot.contains("percentile (log scale)"))
            #expect(plot.contains("latency (log scale)"))
        }

        /// A 10 ms stall of the producer in the middle of the latency scenario is 1 000 messages
        /// sent late at 100 k/s: measured from their intended send times they put the p99.9 near
        /// 10 ms. (Measured from the real send time, as a coordinated-omission-blind load
        /// generator does, the stall would vanish.)
        @Test func aProducerStallShowsInTheLatencyTail() throws {
            let json = temporaryPath("stall.json")
            defer { unlink(json) }
            let (status, output, errors) = try bench([
                "--scenarios", "latency", "--systems", "pipe", "--rates", "100k", "--duration", "1500ms", "--repeat",
                "1",
                "--stall-ms", "10", "--json", json, "--no-plot",
            ])
            #expect(status == .exited(0), "\(output)\n\(errors)")
            let (_, rows) = try runs(json)
            for row in rows {
                let latency = try #require(row["latency_ns"] as? [String: Int], "\(row)")
                let tail = try #require(latency["p999"], "150 000 samples show the p99.9: \(row)")
                #expect(tail >= 5_000_000, "the stall is in the tail: \(row)")
                #expect((latency["max"] ?? 0) >= 9_000_000, "\(row)")
            }
            let pipe = try #require(rows.first { $0["system"] as? String == "pipe" })
            #expect(((pipe["latency_ns"] as? [String: Int])?["p50"] ?? .max) < 1_000_000, "only the tail: \(pipe)")
        }

        /// Sixteen consumers, the most there may be: pipes need a descriptor pair each.
        @Test func fanoutRunsWithTheMostConsumers() throws {
            let json = temporaryPath("fanout.json")
            defer { unlink(json) }
            let (status, output, errors) = try bench([
                "--scenarios", "fanout", "--consumers", "16", "--duration", "50ms", "--repeat", "1", "--json", json,
                "--no-plot",
            ])
            #expect(status == .exited(0), "\(output)\n\(errors)")
            let (_, rows) = try runs(json)
            #expect(
                rows.count == 2 && rows.allSatisfy { $0["failure"] == nil && $0["consumers"] as? Int == 16 }, "\(rows)")
        }

        @Test func badInputIsOneLineBeforeAnythingRuns() throws {
            let emptyPeers = temporaryPath("no-peers")
            mkdir(emptyPeers, 0o755)
            defer { rmdir(emptyPeers) }
            for (arguments, says) in [
                (["--scenarios", "throughput,warp"], "unknown scenario 'warp'; valid: throughput, rtt-spin"),
                (["--systems", "shmring,carrier-pigeon"], "unknown system 'carrier-pigeon'; valid: shmring, c-twin"),
                (["--size", "8"], "--size 8 is out of range: 16 ... 4096"),
                (["--size", "5000"], "--size 5000 is out of range"),
                (["--json", "/nonexistent-dir/out.json"], "--json /nonexistent-dir/out.json cannot be written"),
                (["--plot", "/tmp"], "--plot /tmp cannot be written: not a regular file"),
                (["--duration", "1h"], "--duration"),
                (["--rates", "10k,fast"], "--rates: 'fast'"),
                (["--cpus", "0,0"], "--cpus 0,0"),
                (["--cpus", "0,4096"], "--cpus 0,4096"),
                (["--consumers", "17"], "--consumers 17 is out of range: 1 ... 16"),
                (["--peers", "--peers-directory", emptyPeers], "run perf/peers/build.sh"),
            ] {
                let (status, output, errors) = try bench(arguments, timeout: .seconds(60))
                #expect(status != .exited(0), "\(arguments)")
                #expect(output.isEmpty, "\(arguments): nothing runs: \(output)")
                #expect(
                    errors.split(separator: "\n").count == 1 && errors.hasPrefix("shmring: "), "\(arguments): \(errors)"
                )
                #expect(errors.contains(says), "\(arguments): \(errors)")
            }
        }

        /// With SHMRING_PEERS=1: perf/peers/build.sh builds Boost.Interprocess's message_queue
        /// peer (installing libboost-dev when missing), and the bench runs it next to ShmRing.
        @Test(.enabled(if: ProcessInfo.processInfo.environment["SHMRING_PEERS"] == "1"))
        func aPeerBuildsAndRuns() throws {
            let build = try ChildProcess("/bin/bash", [Self.root + "/perf/peers/build.sh", "boost-mq"])
            #expect(build.wait(timeout: .seconds(900)) == .exited(0), "\(build.standardOutput)\n\(build.standardError)")
            let json = temporaryPath("peer.json")
            defer { unlink(json) }
            let (status, output, errors) = try bench([
                "--peers", "--systems", "boost-mq", "--peers-directory", Self.root + "/perf/peers/bin", "--scenarios",
                "throughput,rtt-block", "--duration", "100ms", "--repeat", "1", "--json", json, "--no-plot",
            ])
            #expect(status == .exited(0), "\(output)\n\(errors)")
            let (_, rows) = try runs(json)
            let peer = rows.filter { $0["system"] as? String == "boost-mq" }
            #expect(peer.count == 2 && peer.allSatisfy { $0["failure"] == nil }, "\(peer)")
            #expect((peer.first { $0["scenario"] as? String == "throughput" }?["msgs_per_s"] as? Double ?? 0) > 0)
        }
    }
}
