// swift-tools-version:6.2
// An example, in a package of its own so that ShmRing never depends on it: a ShmRing consumer
// driven by a plain epoll loop that also serves TCP connections. See README.md.
import PackageDescription

let package = Package(
    name: "EpollConsumer",
    dependencies: [.package(name: "ShmRing", path: "../..")],
    targets: [
        // epoll(7) for Swift: Glibc's module map does not carry <sys/epoll.h>.
        .target(name: "CEpoll"),
        .executableTarget(
            name: "EpollConsumer",
            dependencies: [.product(name: "ShmRing", package: "ShmRing"), "CEpoll"]
        ),
    ]
)
