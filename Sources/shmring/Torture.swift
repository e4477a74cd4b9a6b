import ArgumentParser
import CShmLinux
import ShmRing
import ShmRingTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// `shmring torture`: round after round, a producer and consumers (gating and lossy, blocking and
/// spinning) are started, some are killed with SIGKILL in chosen states and replaced, and after
/// each round the checks run (docs/failure-model.md, "The torture suite").
struct Torture: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Kill producers and consumers at chosen states, round after round, and check what survives.",
        discussion: """
            Each round starts a producer and three consumers under a fresh key, kills one or two of \
            them with SIGKILL in a state they report (a consumer joined, polling, asleep or in the middle \
            of a batch; the producer with a claim it had not committed, in the middle of a batch, or \
            publishing), and replaces them. Then it checks that no process hangs, every message delivered \
            verifies (sequence and checksum), surviving gating consumers saw no gap, lossy ones had every \
            gap reported, a producer finished its stream (it cannot while a dead gating consumer keeps its \
            slot), no memfd of the round is held or mapped anywhere, and Shmem returns to its baseline. One summary line; status 0 when every \
            check held, 1 otherwise.
            """)

    @Option(help: "How many rounds.") var rounds = 20
    @Option(help: "The seed of the random choices (the same seed makes the same choices).") var seed: UInt64?
    @Option(help: "Messages each producer publishes.") var messages = 20_000
    @Option(
        help: ArgumentHelp(
            "How far Shmem may stay above its baseline at the end (other processes use shared memory too).",
            valueName: "size"))
    var shmemTolerance = ByteSize(bytes: 8 << 20)

    func validate() throws {
        guard rounds >= 1, rounds <= 1_000_000 else { throw ValidationError("--rounds \(rounds): 1 ... 1000000") }
        guard messages >= 100, messages <= 100_000_000 else {
            throw ValidationError("--messages \(messages): 100 ... 100000000")
        }
    }

    /// The states a process can be killed in.
    static let consumerStates = ["joined", "polling", "asleep", "mid-batch"]
    static let producerStates = ["claimed", "mid-batch", "publishing"]

    func run() throws {
        CShmLinux_install_stop_signals()
        let seed = self.seed ?? UInt64.random(in: 1...UInt64.max)
        var random = SplitMix64(seed: seed)
        var tally = Tally()
        let baseline = Self.shmemBytes()
        let started = ContinuousClock.now
        for round in 0..<rounds {
            if stopRequested { break }
            // Each round draws from a generator of its own, seeded from the run's: a kill that
            // comes or not (timing) changes nothing in later rounds.
            var harness = Round(
                key: "torture-\(getpid())-\(round)", messages: messages, seed: random.next(), number: round)
            var roundRandom = SplitMix64(seed: harness.seed)
            harness.run(&roundRandom, &tally)
        }
        // Every process is gone: Shmem back to its baseline (give the kernel a moment to free).
        var leaked = 0
        let deadline = ContinuousClock.now + .seconds(5)
        repeat {
            leaked = max(0, Self.shmemBytes() - baseline)
            if leaked <= shmemTolerance.bytes { break }
            usleep(20_000)
        } while ContinuousClock.now < deadline
        if leaked > shmemTolerance.bytes {
            tally.fail("Shmem is \(leaked) bytes above its baseline of \(baseline) after every process ended")
        }
        let elapsed = ContinuousClock.now - started
        let kills = tally.kills.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
        print(
            "torture: seed \(seed), \(tally.rounds) rounds in \(elapsed.components.seconds) s, "
                + "\(tally.kills.values.reduce(0, +)) kills (\(kills)), \(tally.evictions) evictions, "
                + "\(tally.verified) messages verified, \(tally.errors) errors, \(tally.leftBehind) bytes left behind, "
                + "Shmem +\(leaked) bytes")
        if tally.errors > 0 { throw ExitCode(1) }
    }

    /// Shmem in /proc/meminfo, in bytes.
    static func shmemBytes() -> Int {
        guard let file = fopen("/proc/meminfo", "r") else { return 0 }
        defer { fclose(file) }
        var line = [CChar](repeating: 0, count: 256)
        while fgets(&line, 256, file) != nil {
            let text = cLine(line)
            if text.hasPrefix("Shmem:") {
                let kib = text.split(separator: " ").compactMap { Int($0) }.first ?? 0
                return kib * 1024
            }
        }
        return 0
    }
}

/// What the rounds found.
struct Tally {
    var rounds = 0
    var kills: [String: Int] = [:]
    var evictions = 0
    var verified = 0
    var errors = 0
    var leftBehind = 0

    mutating func fail(_ message: String) {
        errors += 1
        printError("shmring torture: \(message)")
    }
}

/// One process of a round, its state pipe and what it said.
struct TortureProcess {
    let name: String
    let pid: pid_t
    let states: Int32
    var buffer: [UInt8] = []
    var lastState = "started"
    var report: [String: String]?
    var dieAt: String?
    var killAt: ContinuousClock.Instant?
    /// SIGKILL sent (it may have exited by itself just before).
    var killed = false
    /// Reaped after our SIGKILL, and replaced.
    var replaced = false
    /// One of the round's first three consumers (never a replacement).
    var original = false
    var status: Int32?

    var isProducer: Bool { name.hasPrefix("producer") }
    var running: Bool { status == nil }
}

/// One round: a producer, three consumers, one or two victims.
struct Round {
    let key: String
    let messages: Int
    let seed: UInt64
    let number: Int
    var processes: [TortureProcess] = []
    var producerFinished = false

    mutating func run(_ random: inout SplitMix64, _ tally: inout Tally) {
        tally.rounds += 1
        // Victims: a consumer every round, its state in turn (so every state comes up in any four
        // rounds); the producer in one round of three, its state in turn too. Which consumer, and
        // when, the seeded generator says (an "asleep" victim is one that blocks).
        let roles: [(policy: String, idle: String)] = [("gating", "block"), ("gating", "spin"), ("lossy", "block")]
        let consumerState = Torture.consumerStates[number % Torture.consumerStates.count]
        let eligible = consumerState == "asleep" ? [0, 2] : [0, 1, 2]
        let consumerVictim = eligible[Int(random.next() % UInt64(eligible.count))]
        let producerState =
            number % 3 == 1 ? Torture.producerStates[(number / 3) % Torture.producerStates.count] : nil
        startProducer(dieAt: producerState, after: Int(random.next() % UInt64(messages / 2)), consumers: 3, &tally)
        for (index, role) in roles.enumerated() {
            startConsumer(
                role, dieAt: index == consumerVictim ? consumerState : nil,
                after: Int(random.next() % UInt64(messages / 2)), &tally)
            processes[processes.count - 1].original = true
        }
        let deadline = ContinuousClock.now + .seconds(120)
        while processes.contains(where: \.running) {
            if ContinuousClock.now >= deadline {
                for index in processes.indices where processes[index].running {
                    tally.fail(
                        "round \(number) (\(key)): \(processes[index].name) hangs in state "
                            + "\(processes[index].lastState); killed")
                    kill(processes[index].pid, SIGKILL)
                }
                reap(blocking: true, &random)
                break
            }
            pump(&random, &tally)
        }
        check(&tally)
    }

    // MARK: Starting

    mutating func startProducer(dieAt: String?, after: Int, consumers: Int, _ tally: inout Tally) {
        var arguments = [
            "torture-role", "producer", "--key", key, "--messages", "\(messages)", "--consumers", "\(consumers)",
            "--seed", "\(seed &+ UInt64(processes.count))",
        ]
        if let dieAt { arguments += ["--die-at", dieAt, "--die-after", "\(after)"] }
        start("producer\(processes.filter(\.isProducer).count + 1)", arguments, dieAt: dieAt, &tally)
    }

    mutating func startConsumer(
        _ role: (policy: String, idle: String), dieAt: String?, after: Int, from: String = "oldest",
        _ tally: inout Tally
    ) {
        var arguments = [
            "torture-role", "consumer", "--key", key, "--policy", role.policy, "--idle", role.idle, "--from", from,
        ]
        if let dieAt { arguments += ["--die-at", dieAt, "--die-after", "\(after)"] }
        start("consumer\(processes.count)(\(role.policy),\(role.idle))", arguments, dieAt: dieAt, &tally)
    }

    /// Spawns this executable with `arguments`; its descriptor 3 is the write end of its state
    /// pipe, its standard output /dev/null.
    mutating func start(_ name: String, _ arguments: [String], dieAt: String?, _ tally: inout Tally) {
        var pipeEnds: [Int32] = [0, 0]
        // Close-on-exec (the harness is single-threaded: nobody spawns in between); the child's
        // descriptor 3 is a dup2, without the flag.
        guard pipe(&pipeEnds) == 0, fcntl(pipeEnds[0], F_SETFD, FD_CLOEXEC) == 0,
            fcntl(pipeEnds[1], F_SETFD, FD_CLOEXEC) == 0
        else {
            tally.fail("round \(number): pipe2: errno \(errno)")
            return
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, pipeEnds[1], 3)
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        let executable = "/proc/self/exe"
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, executable, &actions, nil, argv, environ)
        close(pipeEnds[1])
        guard result == 0 else {
            close(pipeEnds[0])
            tally.fail("round \(number): posix_spawn: errno \(result)")
            return
        }
        _ = fcntl(pipeEnds[0], F_SETFL, O_NONBLOCK)
        processes.append(TortureProcess(name: name, pid: pid, states: pipeEnds[0], dieAt: dieAt))
    }

    // MARK: Running

    /// Reads what the processes said, kills victims when due, reaps, replaces.
    mutating func pump(_ random: inout SplitMix64, _ tally: inout Tally) {
        var entries = processes.map { pollfd(fd: $0.running ? $0.states : -1, events: Int16(POLLIN), revents: 0) }
        let now = ContinuousClock.now
        let nextKill = processes.filter(\.running).compactMap(\.killAt).min()
        let timeout = nextKill.map { max(0, Int32(($0 - now).components.attoseconds / 1_000_000_000_000_000)) } ?? 5
        _ = poll(&entries, nfds_t(entries.count), min(timeout, 5))
        for index in processes.indices where entries[index].revents != 0 { read(index, &random) }
        let afterPoll = ContinuousClock.now
        for index in processes.indices {
            guard processes[index].running, let due = processes[index].killAt, due <= afterPoll else { continue }
            kill(processes[index].pid, SIGKILL)
            processes[index].killed = true
            processes[index].killAt = nil
        }
        reap(blocking: false, &random)
        // Replacements, for what our SIGKILL ended (counted here, from the exit status: a process
        // that exited by itself just before is not a kill): a new consumer for a dead one (while
        // the stream runs), a new producer for a dead one (the consumers follow it: a new epoch).
        for index in processes.indices
        where processes[index].killed && !processes[index].replaced && processes[index].status != nil {
            processes[index].replaced = true
            guard processes[index].status! & 0x7f == SIGKILL else { continue }
            let state = processes[index].lastState
            tally.kills[(processes[index].isProducer ? "producer " : "") + state, default: 0] += 1
            if processes[index].isProducer {
                // It waits for the consumers still reading to follow it (at most 30 s).
                let following = processes.filter { !$0.isProducer && $0.running && !$0.killed && $0.killAt == nil }
                startProducer(dieAt: nil, after: 0, consumers: following.count, &tally)
            } else {
                if !producerFinished {
                    let role =
                        processes[index].name.contains("lossy") ? ("lossy", "block") : ("gating", "block")
                    startConsumer(role, dieAt: nil, after: 0, from: "newest", &tally)
                }
            }
        }
    }

    /// Reads the lines process `index` wrote on its state pipe.
    mutating func read(_ index: Int, _ random: inout SplitMix64) {
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = Glibc.read(processes[index].states, &chunk, chunk.count)
            guard count > 0 else { break }
            processes[index].buffer += chunk[0..<count]
        }
        while let newline = processes[index].buffer.firstIndex(of: UInt8(ascii: "\n")) {
            let line = String(decoding: processes[index].buffer[..<newline], as: UTF8.self)
            processes[index].buffer.removeSubrange(...newline)
            if line.hasPrefix("report ") {
                var report: [String: String] = [:]
                for field in line.dropFirst(7).split(separator: " ") {
                    let parts = field.split(separator: "=", maxSplits: 1)
                    if parts.count == 2 { report[String(parts[0])] = String(parts[1]) }
                }
                processes[index].report = report
                if processes[index].isProducer { producerFinished = true }
                continue
            }
            processes[index].lastState = line
            if line == processes[index].dieAt, processes[index].killAt == nil, !processes[index].killed {
                // Killed in that state, after a random delay of up to 2 ms.
                processes[index].killAt = ContinuousClock.now + .microseconds(Int64(random.next() % 2000))
            }
        }
    }

    /// Collects the processes that ended, after reading what they still had to say.
    mutating func reap(blocking: Bool, _ random: inout SplitMix64) {
        for index in processes.indices where processes[index].running {
            var status: Int32 = 0
            if waitpid(processes[index].pid, &status, blocking ? 0 : WNOHANG) == processes[index].pid {
                read(index, &random)  // its last lines (a report) came before its exit
                processes[index].status = status
                close(processes[index].states)
            }
        }
    }

    // MARK: Checking

    mutating func check(_ tally: inout Tally) {
        let label = "round \(number) (\(key))"
        for process in processes where process.status != nil {
            let status = process.status!
            let signalled = status & 0x7f != 0
            if signalled {
                if (status & 0x7f) != SIGKILL || process.dieAt == nil {
                    tally.fail(
                        "\(label): \(process.name) died of signal \(status & 0x7f) in state \(process.lastState)")
                }
                continue
            }
            let code = (status >> 8) & 0xff
            guard code == 0 else {
                tally.fail("\(label): \(process.name) exited with status \(code) in state \(process.lastState)")
                continue
            }
            guard let report = process.report else {
                tally.fail("\(label): \(process.name) exited without a report")
                continue
            }
            // The producer finished its stream: it could not have while a dead gating consumer
            // kept its slot (the stream is about 30 rings long, and a victim stops reading in its
            // state until killed). It counts the consumers it reclaimed without their detaching.
            if process.isProducer {
                tally.evictions += Int(report["lost"] ?? "0") ?? 0
                continue
            }
            // The first three read to a producer's end (following a new producer if one died);
            // a replacement may come after the end.
            if process.original && report["ended"] != "end" {
                tally.fail("\(label): \(process.name) ended by \(report["ended"] ?? "?"), not the stream's end")
            }
            let number = { (field: String) in report[field].flatMap(Int.init) ?? -1 }
            tally.verified += max(0, number("received"))
            if number("corrupted") != 0 { tally.fail("\(label): \(process.name): \(number("corrupted")) corrupted") }
            if number("gaps") != 0 { tally.fail("\(label): \(process.name): \(number("gaps")) gaps (gating)") }
            if number("unreported") != 0 {
                tally.fail("\(label): \(process.name): \(number("unreported")) gaps not reported (lossy)")
            }
        }
        if !producerFinished { tally.fail("\(label): no producer finished its stream") }
        // Nothing of the round is left: no process maps or holds one of its memfds.
        let left = Self.bytesLeft(key: key)
        if left > 0 {
            tally.leftBehind += left
            tally.fail("\(label): \(left) bytes of its memfds still held after every process ended")
        }
    }

    /// The sizes of the memfds named after `key` that any process still maps, plus 1 byte for
    /// each descriptor of one still open (a descriptor's size is not in /proc without opening it).
    static func bytesLeft(key: String) -> Int {
        // The round's memfds: "/memfd:shmring-ring:KEY (deleted)", "…-slot:KEY:3 (deleted)".
        func isRounds(_ text: String) -> Bool { text.contains(":\(key) ") || text.contains(":\(key):") }
        var total = 0
        for pid in directoryEntries("/proc") where Int(pid) != nil {
            if let maps = fopen("/proc/\(pid)/maps", "r") {
                var line = [CChar](repeating: 0, count: 1024)
                while fgets(&line, 1024, maps) != nil {
                    let text = cLine(line)
                    guard isRounds(text), let range = text.split(separator: " ").first else { continue }
                    let bounds = range.split(separator: "-").compactMap { Int($0, radix: 16) }
                    if bounds.count == 2 { total += bounds[1] - bounds[0] }
                }
                fclose(maps)
            }
            for fd in directoryEntries("/proc/\(pid)/fd") {
                var target = [CChar](repeating: 0, count: 512)
                if readlink("/proc/\(pid)/fd/\(fd)", &target, 511) > 0, isRounds(cLine(target)) { total += 1 }
            }
        }
        return total
    }

    /// The names in a directory (none when it cannot be read: a process that just ended).
    static func directoryEntries(_ path: String) -> [String] {
        guard let directory = opendir(path) else { return [] }
        defer { closedir(directory) }
        var names: [String] = []
        while let entry = readdir(directory) {
            names.append(
                withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) })
        }
        return names
    }
}

/// A line that `fgets` read, as a string.
private func cLine(_ buffer: [CChar]) -> String {
    String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
