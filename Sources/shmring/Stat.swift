import ArgumentParser
import CShmLinux
import ShmRing

#if canImport(Glibc)
import Glibc
#endif

/// `shmring stat KEY`: what a running ring is doing, from outside.
struct Stat: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show the ring under KEY: header, producer, and every attached consumer.")

    @Argument(help: "The ring's key.")
    var key: String

    @Flag(help: "Refresh until interrupted (in place on a terminal).")
    var watch = false

    @Flag(help: "Print JSON.")
    var json = false

    @Option(help: "Seconds between refreshes with --watch.")
    var interval: Double = 1

    @Option(help: "The key's socket directory (default: the abstract namespace).")
    var dir: String?

    func validate() throws {
        guard interval > 0 else { throw ValidationError("--interval must be positive, got \(interval)") }
    }

    func run() throws {
        let observer = try RingObserver(key: key, namespace: namespace(dir))
        guard watch else {
            writeOut(render(observer.snapshot()))
            return
        }
        CShmLinux_install_stop_signals()
        let terminal = isatty(1) == 1
        while !stopRequested {
            let snapshot = observer.snapshot()
            // ANSI (home, clear) only on a terminal; elsewhere one snapshot after the other (JSON:
            // one object per line; text: a blank line between).
            let text = render(snapshot)
            writeOut(terminal ? "\u{1B}[H\u{1B}[2J" + text : (json ? text : text + "\n"))
            // The pid comes from shared memory: only a positive one is asked about (kill with 0 or
            // a negative pid would ask about process groups).
            if snapshot.producerPID <= 0 || (kill(snapshot.producerPID, 0) != 0 && errno == ESRCH) {
                printError("shmring stat: \(key): the producer (pid \(snapshot.producerPID)) is gone")
                return
            }
            usleep(UInt32(min(interval, 3600) * 1_000_000))
        }
    }

    func render(_ snapshot: RingSnapshot) -> String { json ? renderJSON(snapshot) : renderText(snapshot) }

    func renderText(_ s: RingSnapshot) -> String {
        var text = """
            ring \(s.key)  segment \(s.segmentID)  layout v\(s.layoutVersion)
              capacity \(s.capacity) bytes, alignment \(s.alignment), max message \(s.maxMessageLength) bytes\
            \(s.refusesGating ? ", refuses gating consumers" : "")
              producer pid \(s.producerPID): position \(s.position), next sequence \(s.nextSequence), \
            published \(s.published) messages (\(s.publishedBytes) bytes), back-pressure events \(s.backPressureEvents)
              demotions \(s.demotions), evictions \(s.evictions), wakes \(s.wakes); consumers: \(s.consumers.count)

            """
        if !s.consumers.isEmpty {
            text += "  slot  pid       policy   position              lag        delivered    lapped (bytes)\n"
            for c in s.consumers {
                let flags = (c.demoted ? "  demoted" : "") + (c.evicted ? "  evicted" : "")
                text +=
                    "  \(pad(c.slot, 4))  \(pad(c.pid, 8))  \(policyName(c).padding(7))  \(pad(c.position, 20))  "
                    + "\(pad(c.lag, 9))  \(pad(c.delivered, 11))  \(c.lappedMessages) (\(c.lappedBytes))\(flags)\n"
                if c.announcedWaits > 0 || c.sleeping {
                    text +=
                        "        waits \(c.announcedWaits), slept \(c.sleeps), woken \(c.wakeUps)"
                        + (c.sleeping ? ", waiting now" : "") + "\n"
                }
            }
        }
        return text
    }

    /// "gating", "lossy", or "unknown(N)" for a value this build does not know.
    func policyName(_ consumer: RingSnapshot.Consumer) -> String {
        consumer.policy.map { "\($0)" } ?? "unknown(\(consumer.rawPolicy))"
    }

    func renderJSON(_ s: RingSnapshot) -> String {
        let consumers = s.consumers.map { c in
            "{\"slot\": \(c.slot), \"pid\": \(c.pid), \"policy\": \(jsonString(policyName(c))), \"position\": \(c.position), "
                + "\"lag\": \(c.lag), \"delivered\": \(c.delivered), \"delivered_bytes\": \(c.deliveredBytes), "
                + "\"lapped_messages\": \(c.lappedMessages), \"lapped_bytes\": \(c.lappedBytes), "
                + "\"demoted\": \(c.demoted), \"evicted\": \(c.evicted), \"sleeping\": \(c.sleeping), "
                + "\"waits\": \(c.announcedWaits), \"sleeps\": \(c.sleeps), \"woken\": \(c.wakeUps)}"
        }
        return "{\"key\": \(jsonString(s.key)), \"segment_id\": \(jsonString(s.segmentID.description)), "
            + "\"layout_version\": \(s.layoutVersion), \"capacity\": \(s.capacity), \"alignment\": \(s.alignment), "
            + "\"max_message_length\": \(s.maxMessageLength), \"refuses_gating\": \(s.refusesGating), "
            + "\"producer\": {\"pid\": \(s.producerPID), \"position\": \(s.position), \"next_sequence\": \(s.nextSequence), "
            + "\"published\": \(s.published), \"published_bytes\": \(s.publishedBytes), "
            + "\"back_pressure_events\": \(s.backPressureEvents), \"demotions\": \(s.demotions), "
            + "\"evictions\": \(s.evictions), \"limit\": \(s.limit), \"wakes\": \(s.wakes)}, "
            + "\"consumers\": [\(consumers.joined(separator: ", "))]}\n"
    }

    private func pad<T: BinaryInteger>(_ value: T, _ width: Int) -> String { "\(value)".padding(width) }
}

extension String {
    /// Left-aligned in `width` columns.
    func padding(_ width: Int) -> String { count >= width ? self : self + String(repeating: " ", count: width - count) }
}
