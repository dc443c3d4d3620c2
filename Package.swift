// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "udm",
    products: [
        .executable(name: "udm", targets: ["udm"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
    ],
    targets: [
        // libfuse3 headers with FUSE_USE_VERSION set; nothing else.
        .systemLibrary(name: "CFuse3", pkgConfig: "fuse3"),
        // The few Linux declarations Glibc's Swift module hides (they need _GNU_SOURCE).
        .systemLibrary(name: "CLinux"),
        // liburing, and the FUSE-over-io_uring protocol declarations Debian 12's headers lack.
        .systemLibrary(name: "CUring"),
        // libnbd's client API (NBD devices in tables); nothing else.
        .systemLibrary(name: "CNbd", pkgConfig: "libnbd"),
        .target(name: "UDMCore"),
        .target(name: "UDMExceptionStore", dependencies: ["UDMCore"]),
        .target(name: "UDMTargets", dependencies: ["UDMCore", "UDMExceptionStore"]),
        .target(name: "UDMBackends", dependencies: ["UDMCore", "CLinux", "CNbd"]),
        .target(name: "UDMFuse", dependencies: ["UDMCore", "CFuse3", "CLinux", "CUring"]),
        .target(name: "UDMControl", dependencies: [
            "UDMCore", "UDMTargets", "UDMBackends", "UDMFuse", "CLinux",
            .product(name: "Logging", package: "swift-log"),
        ]),
        .executableTarget(name: "udm", dependencies: [
            "UDMControl", "CLinux",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .target(name: "UDMTestSupport", dependencies: ["UDMCore"]),
        .testTarget(name: "UDMCoreTests", dependencies: ["UDMCore", "UDMTargets", "UDMTestSupport"]),
        .testTarget(name: "UDMExceptionStoreTests", dependencies: ["UDMCore", "UDMExceptionStore", "UDMTestSupport"]),
        .testTarget(name: "UDMTargetsTests", dependencies: ["UDMCore", "UDMExceptionStore", "UDMTargets", "UDMTestSupport"]),
        .testTarget(name: "UDMFuseTests", dependencies: ["UDMFuse", "CLinux"]),
        .testTarget(name: "UDMBackendsTests", dependencies: ["UDMCore", "UDMBackends", "UDMTargets", "UDMTestSupport"]),
    ]
)
