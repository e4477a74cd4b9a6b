#if canImport(Glibc)
import Glibc
#endif

/// How much memory a new segment may take without risking the OOM killer.
///
/// `fallocate` on a memfd charges the pages to the caller's memory cgroup at once. Inside a
/// cgroup that is too small the kernel does not fail the call: it OOM-kills the process
/// (SIGKILL). So a segment's size is checked first against `MemAvailable` in `/proc/meminfo`
/// and against the room left in every memory cgroup from the caller's up to the root
/// (`memory.max - memory.current` in cgroup v2, `memory.limit_in_bytes - memory.usage_in_bytes`
/// in v1), and a request that does not fit is answered with an error instead.
package struct MemoryBudget: Sendable, Equatable {
    /// The smallest of the limits found.
    package var available: Int
    /// Where `available` comes from: "MemAvailable" or the cgroup file that bounds it.
    package var source: String

    /// Reads the budget now. Missing files are skipped (a machine without cgroups, or a
    /// sandbox that hides /proc/meminfo); if nothing can be read, the budget is unbounded.
    package static func current() -> MemoryBudget {
        var budget = MemoryBudget(available: Int.max, source: "no limit found")
        if let memAvailable = memAvailable() {
            budget = MemoryBudget(available: memAvailable, source: "MemAvailable in /proc/meminfo")
        }
        for limit in cgroupLimits() where limit.available < budget.available {
            budget = limit
        }
        return budget
    }

    /// `MemAvailable` in bytes.
    static func memAvailable() -> Int? {
        guard let text = readSmallFile("/proc/meminfo") else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("MemAvailable:") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count >= 2, let kib = Int(fields[1]) else { return nil }
            return kib.multipliedReportingOverflow(by: 1024).overflow ? Int.max : kib * 1024
        }
        return nil
    }

    /// The room left in each memory cgroup from ours up to the mount's root.
    static func cgroupLimits() -> [MemoryBudget] {
        guard let membership = readSmallFile("/proc/self/cgroup"),
            let mounts = readSmallFile("/proc/self/mountinfo")
        else { return [] }
        var results: [MemoryBudget] = []
        for mount in cgroupMounts(mounts) {
            // "hierarchy-id:controllers:path"; v2 is "0::path", v1 lists "memory" among controllers.
            for line in membership.split(separator: "\n") {
                let parts = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
                guard parts.count == 3 else { continue }
                let controllers = parts[1].split(separator: ",")
                let matches = mount.isV2 ? parts[0] == "0" && parts[1].isEmpty : controllers.contains("memory")
                guard matches else { continue }
                var path = String(parts[2])
                // Inside a cgroup namespace the mount's root is a prefix of our path.
                if mount.root != "/", path.hasPrefix(mount.root) { path = String(path.dropFirst(mount.root.count)) }
                results += limits(under: mount, path: path)
            }
        }
        return results
    }

    private struct CgroupMount {
        var mountPoint: String
        var root: String
        var isV2: Bool
    }

    private static func cgroupMounts(_ mountinfo: String) -> [CgroupMount] {
        var mounts: [CgroupMount] = []
        for line in mountinfo.split(separator: "\n") {
            // id parent major:minor root mount-point options [optional...] - fstype source super-options
            let halves = line.split(separator: " - ", maxSplits: 1)
            guard halves.count == 2 else { continue }
            let left = halves[0].split(separator: " ")
            let right = halves[1].split(separator: " ")
            guard left.count >= 5, right.count >= 1 else { continue }
            let root = String(left[3])
            let mountPoint = String(left[4])
            if right[0] == "cgroup2" {
                mounts.append(CgroupMount(mountPoint: mountPoint, root: root, isV2: true))
            } else if right[0] == "cgroup", right.count >= 3, right[2].split(separator: ",").contains("memory") {
                mounts.append(CgroupMount(mountPoint: mountPoint, root: root, isV2: false))
            }
        }
        return mounts
    }

    private static func limits(under mount: CgroupMount, path: String) -> [MemoryBudget] {
        let (limitFile, usageFile) =
            mount.isV2 ? ("memory.max", "memory.current") : ("memory.limit_in_bytes", "memory.usage_in_bytes")
        var results: [MemoryBudget] = []
        var components = path.split(separator: "/").map(String.init)
        while true {
            let directory = ([mount.mountPoint] + components).joined(separator: "/")
            if let limit = readNumber("\(directory)/\(limitFile)"), let usage = readNumber("\(directory)/\(usageFile)")
            {
                results.append(
                    MemoryBudget(available: max(0, limit - min(usage, limit)), source: "\(directory)/\(limitFile)"))
            }
            if components.isEmpty { break }
            components.removeLast()
        }
        return results
    }

    /// A decimal number in a one-line file; "max" (cgroup v2, no limit) reads as nil.
    private static func readNumber(_ path: String) -> Int? {
        guard let text = readSmallFile(path) else { return nil }
        let trimmed = text.split(separator: "\n").first.map(String.init) ?? ""
        return Int(trimmed)
    }
}

/// Reads a small text file of /proc or /sys (at most 1 MiB) with plain syscalls.
package func readSmallFile(_ path: String) -> String? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 16384)
    while bytes.count < 1 << 20 {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { break }
        bytes += chunk[0..<n]
    }
    return String(decoding: bytes, as: UTF8.self)
}
