// shmring: publish, subscribe, inspect and benchmark ShmRing feeds from the shell.
//
// For now: --version, --help and `demo`, the two-process demonstration that scripts/demo runs.
// Later issues add pub, sub, stat, shm and bench (docs/cli.md).
import ArgumentParser
import ShmRing

@main
struct ShmRingCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "shmring",
        abstract: "Shared-memory messaging for Linux: publish, subscribe, inspect, benchmark.",
        version: ShmRingVersion.current,
        subcommands: [Demo.self]
    )
}
