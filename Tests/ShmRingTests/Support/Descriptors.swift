import SystemPackage

@testable import ShmRing

#if canImport(Glibc)
import Glibc
#endif

/// How many descriptors of this process refer to `segment`'s memfd (found by its unique name,
/// so that tests running in parallel do not disturb the count).
func descriptorsOpen(on segment: Segment) -> Int {
    var target = [CChar](repeating: 0, count: 4096)
    let own = readlink("/proc/self/fd/\(segment.descriptor.rawValue)", &target, target.count - 1)
    guard own > 0, let directory = opendir("/proc/self/fd") else { return -1 }
    defer { closedir(directory) }
    let name = String(decoding: target[0..<own].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    var count = 0
    while let entry = readdir(directory) {
        let fd = withUnsafeBytes(of: entry.pointee.d_name) {
            String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self)
        }
        var link = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/fd/\(fd)", &link, link.count - 1)
        if n > 0, String(decoding: link[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) == name { count += 1 }
    }
    return count
}
