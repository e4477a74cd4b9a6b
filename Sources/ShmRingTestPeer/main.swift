// shmring-test-peer: the process that ShmRing's multi-process tests spawn (docs/testing.md).
//
// One subcommand per scenario; descriptors arrive inherited at the numbers the test names on the
// command line. Every peer watches its lifeline (SHMRING_LIFELINE_FD): when the test process
// goes away, the write end closes and the peer exits at once, so no peer outlives its test.
// Results are printed on stdout as `key=value` lines; "ready" lines go to SHMRING_READY_FD.
import CShmAtomics
import CShmLinux
import ShmRing
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

PeerRuntime.start()

let arguments = Array(CommandLine.arguments.dropFirst())
guard let command = arguments.first else {
    PeerRuntime.fail("usage: shmring-test-peer COMMAND [OPTIONS]; commands: \(PeerCommands.all.keys.sorted())")
}
guard let run = PeerCommands.all[command] else {
    PeerRuntime.fail("unknown command \(command); commands: \(PeerCommands.all.keys.sorted())")
}
let options = PeerOptions(Array(arguments.dropFirst()))
do {
    try run(options)
    exit(0)
} catch {
    PeerRuntime.fail("\(command): \(error)")
}
