// shmring: publish, subscribe, inspect and benchmark ShmRing feeds from the shell (docs/cli.md).
import ArgumentParser
import ShmRing

#if canImport(Glibc)
import Glibc
#endif

@main
struct ShmRingCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "shmring",
        abstract: "Shared-memory messaging for Linux: publish, subscribe, inspect, benchmark.",
        version: ShmRingVersion.current,
        subcommands: [
            Pub.self, Sub.self, Stat.self, Shm.self, Bench.self, Torture.self, Demo.self, TortureRole.self, BenchRole.self,
        ]
    )

    /// Runs the command; every error is one line on stderr ("shmring: ...") and a non-zero
    /// status, help and version go to stdout with status 0.
    static func main() {
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch let code as ExitCode {
            Glibc.exit(code.rawValue)
        } catch let failure as CommandFailure {
            printError("shmring: \(failure.message)")
            Glibc.exit(failure.status)
        } catch let error as RingError {
            printError("shmring: \(error)")
            Glibc.exit(1)
        } catch let error as SharedMemoryError {
            printError("shmring: \(error)")
            Glibc.exit(1)
        } catch {
            let code = exitCode(for: error)
            if code == .success {
                writeOut(fullMessage(for: error) + "\n")
                Glibc.exit(0)
            }
            // ArgumentParser's message, on one line.
            let message = message(for: error).split(separator: "\n").map { $0.trimmingSpaces }.filter { !$0.isEmpty }
            printError("shmring: " + message.joined(separator: " "))
            Glibc.exit(code.rawValue == 0 ? 1 : code.rawValue)
        }
    }
}

extension Substring {
    var trimmingSpaces: Substring {
        var result = self
        while result.first == " " { result = result.dropFirst() }
        while result.last == " " { result = result.dropLast() }
        return result
    }
}
