// swift-tools-version:6.2
// ShmRing: shared-memory messaging for Linux. See docs/architecture.md for the layers and what may
// import what.
import PackageDescription

// Our own targets treat every warning as an error, in every build (dependencies keep theirs).
let swiftSettings: [SwiftSetting] = [.treatAllWarnings(as: .error)]
let cSettings: [CSetting] = [.enableWarning("all"), .enableWarning("extra"), .treatAllWarnings(as: .error)]

let package = Package(
    name: "ShmRing",
    products: [
        .library(name: "ShmRing", targets: ["ShmRing"]),
        .executable(name: "shmring", targets: ["shmring"]),
        .executable(name: "shmring-test-peer", targets: ["ShmRingTestPeer"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
    ],
    targets: [
        // Layer 0: C. Header-only C11 atomics over raw pointers (Swift cannot import _Atomic).
        .target(name: "CShmAtomics", cSettings: cSettings),
        // liburing, found through pkg-config; Debian's liburing-dev provides it.
        .systemLibrary(
            name: "CLibURing",
            pkgConfig: "liburing",
            providers: [.apt(["liburing-dev"])]
        ),
        // Layer 0: C. memfd and seals, SCM_RIGHTS, credentials, pidfd, futex, the robust mutex and
        // an opaque io_uring wrapper (<liburing.h> is included by .c files only).
        .target(
            name: "CShmLinux",
            dependencies: ["CLibURing"],
            cSettings: cSettings + [.define("_GNU_SOURCE")]
        ),
        // Layer 1: the Swift library.
        .target(
            name: "ShmRing",
            dependencies: [
                "CShmAtomics",
                "CShmLinux",
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            swiftSettings: swiftSettings
        ),
        // Beside the library, never in it: what the test peer, the tests and the command's
        // generated traffic need (seeded randomness, self-checking messages; in C, a seccomp
        // filter, CPU pinning, spawning with other descriptors closed).
        .target(name: "CShmTestSupport", cSettings: cSettings + [.define("_GNU_SOURCE")]),
        .target(name: "ShmRingTestSupport", swiftSettings: swiftSettings),
        // `shmring bench`'s C side: the TSC, the roles' shared page and arguments, and the C
        // baselines (plain primitives and C rings) that run next to ShmRing; perf/peers builds
        // against its headers too (docs/benchmarking.md).
        .target(
            name: "CShmBench",
            dependencies: ["CShmAtomics"],
            cSettings: cSettings + [.define("_GNU_SOURCE")]
        ),
        // Layer 2: the command-line tool.
        .executableTarget(
            name: "shmring",
            dependencies: [
                "ShmRing",
                "ShmRingTestSupport",
                "CShmAtomics",
                "CShmLinux",
                "CShmBench",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            swiftSettings: swiftSettings
        ),
        // The process that multi-process tests spawn (docs/testing.md).
        .executableTarget(
            name: "ShmRingTestPeer",
            dependencies: [
                "ShmRing",
                "ShmRingTestSupport",
                "CShmAtomics",
                "CShmLinux",
                "CShmTestSupport",
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "ShmRingTests",
            dependencies: [
                "ShmRing",
                "ShmRingTestSupport",
                "ShmRingTestPeer",
                "shmring",
                "CShmAtomics",
                "CShmLinux",
                "CShmTestSupport",
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            swiftSettings: swiftSettings
        ),
    ],
    swiftLanguageModes: [.v6]
)
