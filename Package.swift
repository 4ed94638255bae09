// swift-tools-version: 6.0
import PackageDescription

let package = Package(
    name: "masq",
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
        // IP addresses, prefixes and protocols: the vocabulary every layer shares.
        .target(name: "NetworkTypes"),
        // The one way off the cooperative pool: threads for blocking work and fd wait loops.
        .target(name: "Blocking"),
        // The API contract shared by masqd and masq-client, config keys included (re-exports NetworkTypes).
        .target(name: "API", dependencies: ["NetworkTypes"]),
        // rtnetlink: the one place that opens netlink sockets (dumps, monitor, route lookup).
        .target(
            name: "Netlink",
            dependencies: ["Blocking", "NetworkTypes", "CMasq", .product(name: "Logging", package: "swift-log")]
        ),
        // libbpf, maps and attachments; returns its own value types. Knows neither the API nor NIO.
        .target(
            name: "Datapath",
            dependencies: [
                "NetworkTypes",
                "CMasq",
                "CLibbpf",
                .product(name: "Logging", package: "swift-log"),
            ],
            plugins: ["BPFObjectPlugin"]
        ),
        // masqd's services: config, reconcile inputs, the reconciler, watchers, conntrack GC.
        .target(
            name: "Daemon",
            dependencies: [
                "API",
                "Blocking",
                "NetworkTypes",
                "Netlink",
                "Datapath",
                "CMasq",
                "CLibbpf",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // The control API over NIO and the systemd notifier: the one place datapath and daemon
        // values become API types.
        .target(
            name: "ControlServer",
            dependencies: [
                "API",
                "Blocking",
                "Daemon",
                "Datapath",
                "Netlink",
                "CMasq",
                "CSystemd",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]
        ),
        // masqd's command line and the service group that wires the targets together.
        .target(
            name: "MasqdCLI",
            dependencies: [
                "API",
                "Daemon",
                "Datapath",
                "ControlServer",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "masqd",
            dependencies: [
                "MasqdCLI",
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
        // Compiles bpf/*.c for the bpf target and embeds the object in Datapath.
        .plugin(name: "BPFObjectPlugin", capability: .buildTool()),
        .testTarget(name: "DaemonTests", dependencies: ["API", "Blocking", "Daemon", "Datapath", "Netlink", "NetworkTypes", "MasqdCLI"]),
        .testTarget(name: "DatapathTests", dependencies: ["API", "Blocking", "ControlServer", "Datapath", "Daemon", "Netlink", "NetworkTypes", "CMasq", "CLibbpf"]),
        .testTarget(
            name: "APITests",
            dependencies: [
                "API", "Daemon", "Datapath", "Netlink", "ControlServer", "MasqdCLI", "CMasq", "CLibbpf", "TestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Yams", package: "Yams"),
            ]
        ),
        .testTarget(name: "E2ETests", dependencies: ["API", "Daemon", "Datapath", "CMasq", "CLibbpf", "TestSupport"], exclude: ["netprobe.py"]),
        // Child processes for the tests that run masqd, masq-client and host tools.
        .target(name: "TestSupport", path: "Tests/TestSupport"),
    ]
)
