import SystemPackage

@testable import ShmRing

#if canImport(Glibc)
import Glibc
#endif

/// What `/proc/self/fd/N` links to (for a memfd: "/memfd:NAME (deleted)").
func descriptorLink(_ descriptor: FileDescriptor) -> String? {
    readLink("/proc/self/fd/\(descriptor.rawValue)")
}

/// How many descriptors of this process link to `link` (a memfd's unique name, so that tests
/// running in parallel do not disturb the count).
func descriptorsOpen(linkingTo link: String) -> Int {
    guard let directory = opendir("/proc/self/fd") else { return -1 }
    defer { closedir(directory) }
    var count = 0
    while let entry = readdir(directory) {
        let fd = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        if readLink("/proc/self/fd/\(fd)") == link { count += 1 }
    }
    return count
}

/// How many descriptors of this process refer to `segment`'s memfd.
func descriptorsOpen(on segment: Segment) -> Int {
    descriptorLink(segment.descriptor).map(descriptorsOpen(linkingTo:)) ?? -1
}

func readLink(_ path: String) -> String? {
    var buffer = [CChar](repeating: 0, count: 4096)
    let n = readlink(path, &buffer, buffer.count - 1)
    guard n > 0 else { return nil }
    return String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
