// swift-tools-version:6.1
// ShmRing's benchmarks (package-benchmark), in a package of their own so that users of ShmRing
// never resolve the benchmark tooling. Run from this directory:
//   swift package benchmark                      # all, with the default metrics
//   swift package benchmark --filter 'lock.*'
// See docs/performance.md.
import PackageDescription

let package = Package(
    name: "ShmRingBenchmarks",
    dependencies: [
        .package(name: "ShmRing", path: ".."),
        .package(url: "https://github.com/ordo-one/package-benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        .executableTarget(
            name: "SharedMemoryBenchmarks",
            dependencies: [
                .product(name: "ShmRing", package: "ShmRing"),
                .product(name: "Benchmark", package: "package-benchmark"),
            ],
            path: "Benchmarks/SharedMemoryBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "package-benchmark")]
        ),
        .executableTarget(
            name: "RingBenchmarks",
            dependencies: [
                .product(name: "ShmRing", package: "ShmRing"),
                .product(name: "Benchmark", package: "package-benchmark"),
            ],
            path: "Benchmarks/RingBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "package-benchmark")]
        ),
    ],
    swiftLanguageModes: [.v6]
)
