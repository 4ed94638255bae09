// swift-tools-version: 6.0
import PackageDescription

let package = Package(
    name: "masq",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "masqd", targets: ["masqd"]),
        .executable(name: "masq-client", targets: ["Client"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.6.0"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "5.0.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.6.0"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.0"),
    ],
    targets: [
        // libbpf from Debian's libbpf-dev.
        .systemLibrary(
            name: "CLibbpf",
            pkgConfig: "libbpf",
            providers: [.apt(["libbpf-dev"])]
        ),
        // libsystemd from Debian's libsystemd-dev: sd_notify and socket activation.
        .systemLibrary(
            name: "CSystemd",
            pkgConfig: "libsystemd",
            providers: [.apt(["libsystemd-dev"])]
        ),
        // The datapath ABI (bpf/include/masq_abi.h) and a small libbpf shim for option structs.
        .target(
            name: "CMasq",
            dependencies: ["CLibbpf"],
            linkerSettings: [.linkedLibrary("bpf")]
        ),
        // The API contract shared by masqd and masq-client.
        .target(name: "API"),
        // masqd's logic: config, desired state, datapath loader, reconcile, services.
        .target(
            name: "Daemon",
            dependencies: [
                "API",
                "CMasq",
                "CLibbpf",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                "CSystemd",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            plugins: ["BPFObjectPlugin"]
        ),
        .executableTarget(
            name: "masqd",
            dependencies: [
                "Daemon",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(
            name: "Client",
            dependencies: [
                "API",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Yams", package: "Yams"),
            ]
        ),
        // Compiles bpf/*.c for the bpf target and embeds the object in Daemon.
        .plugin(name: "BPFObjectPlugin", capability: .buildTool()),
        .testTarget(name: "DaemonTests", dependencies: ["Daemon"]),
        .testTarget(name: "DatapathTests", dependencies: ["Daemon", "CMasq", "CLibbpf"]),
        .testTarget(
            name: "APITests",
            dependencies: [
                "API", "Daemon", "CMasq", "CLibbpf", "TestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Yams", package: "Yams"),
            ]
        ),
        .testTarget(name: "E2ETests", dependencies: ["API", "Daemon", "CMasq", "CLibbpf", "TestSupport"], exclude: ["netprobe.py"]),
        // Child processes for the tests that run masqd, masq-client and host tools.
        .target(name: "TestSupport", path: "Tests/TestSupport"),
    ]
)
