import ShmRing
import Testing

/// The example of README.md and docs/shared-memory.md, as written there (both "processes" in one
/// here; SharedMemoryAcrossProcessesTests does it across processes). If it stops compiling or
/// working, the documents are wrong.
@Suite struct DocumentationExampleTests {
    @Test func theSharedMemoryExample() throws {
        let key = uniqueKey()

        // Process A: creates 4 KiB under a key and writes under the lock.
        let memory = SharedMemory(key: key)
        try memory.create(size: 4096)
        try memory.withLock { _ in
            try memory.withUnsafeMutableBytes { $0.storeBytes(of: 101.25, as: Double.self) }
        }

        // Process B (same user): attaches by the key and reads.
        let view = SharedMemory(key: key)
        try view.attach(mode: .readOnly)
        let price = try view.withLock { _ in try view.withUnsafeBytes { $0.load(as: Double.self) } }

        #expect(price == 101.25)
    }
}
