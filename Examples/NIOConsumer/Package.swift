// swift-tools-version:6.2
// An example, in a package of its own so that ShmRing never depends on SwiftNIO: a ShmRing
// consumer driven by a SwiftNIO event loop next to a TCP server. See README.md.
import PackageDescription

let package = Package(
    name: "NIOConsumer",
    dependencies: [
        .package(name: "ShmRing", path: "../.."),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
    ],
    targets: [
        .executableTarget(
            name: "NIOConsumer",
            dependencies: [
                .product(name: "ShmRing", package: "ShmRing"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        )
    ]
)
