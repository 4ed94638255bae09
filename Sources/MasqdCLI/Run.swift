@preconcurrency import Glibc
import API
import ArgumentParser
import ControlServer
import Daemon
import Foundation
import Logging

extension NameSpecification {
    static func key(_ key: ConfigKey) -> Self { .customLong(key.rawValue) }
}

extension ArgumentHelp {
    static func key(_ key: ConfigKey) -> Self { Self(key.spec.help) }
}

extension MasqdCommand {
    /// `masqd run`: load the datapath, attach it, keep it reconciled until SIGTERM.
    public struct Run: AsyncParsableCommand {
        public static let configuration = CommandConfiguration(
            abstract: "Run the daemon (the default). Every config key is also a flag; flags win over the file."
        )

        @Option(help: "The daemon's config file (YAML or JSON, keys as the flags below).")
        var config: String?

        // One flag a config key, named and explained by its `ConfigKey`; `flagSettings` finds
        // them by property name, so each property is named as its key's case. A list key's flag
        // is an array: given again it adds to the list, as Cilium's string-slice flags do.
        @Option(name: .key(.enableIPv4Masquerade), help: .key(.enableIPv4Masquerade)) var enableIPv4Masquerade: String?
        @Option(name: .key(.enableIPv6Masquerade), help: .key(.enableIPv6Masquerade)) var enableIPv6Masquerade: String?
        @Option(name: .key(.ipv4NativeRoutingCIDR), help: .key(.ipv4NativeRoutingCIDR)) var ipv4NativeRoutingCIDR: String?
        @Option(name: .key(.ipv6NativeRoutingCIDR), help: .key(.ipv6NativeRoutingCIDR)) var ipv6NativeRoutingCIDR: String?
        @Option(name: .key(.podCIDRs), help: .key(.podCIDRs)) var podCIDRs: [String] = []
        @Option(name: .key(.devices), help: .key(.devices)) var devices: [String] = []
        @Option(name: .key(.enableIPMasqAgent), help: .key(.enableIPMasqAgent)) var enableIPMasqAgent: String?
        @Option(name: .key(.ipMasqAgentConfigPath), help: .key(.ipMasqAgentConfigPath)) var ipMasqAgentConfigPath: String?
        @Option(name: .key(.clusterNodeIPs), help: .key(.clusterNodeIPs)) var clusterNodeIPs: [String] = []
        @Option(name: .key(.snatPortRange), help: .key(.snatPortRange)) var snatPortRange: String?
        @Option(name: .key(.natMaxEntries), help: .key(.natMaxEntries)) var natMaxEntries: String?
        @Option(name: .key(.socketPath), help: .key(.socketPath)) var socketPath: String?
        @Option(name: .key(.socketGroup), help: .key(.socketGroup)) var socketGroup: String?
        @Option(name: .key(.prometheusServeAddr), help: .key(.prometheusServeAddr)) var prometheusServeAddr: String?
        @Option(name: .key(.bpffsRoot), help: .key(.bpffsRoot)) var bpffsRoot: String?
        @Option(name: .key(.logLevel), help: .key(.logLevel)) var logLevel: String?
        @Option(name: .key(.attachMode), help: .key(.attachMode)) var attachMode: String?
        @Option(name: .key(.conntrackTCPSynTimeout), help: .key(.conntrackTCPSynTimeout)) var conntrackTCPSynTimeout: String?
        @Option(name: .key(.conntrackTCPEstablishedTimeout), help: .key(.conntrackTCPEstablishedTimeout)) var conntrackTCPEstablishedTimeout: String?
        @Option(name: .key(.conntrackTCPFinWaitTimeout), help: .key(.conntrackTCPFinWaitTimeout)) var conntrackTCPFinWaitTimeout: String?
        @Option(name: .key(.conntrackTCPCloseWaitTimeout), help: .key(.conntrackTCPCloseWaitTimeout)) var conntrackTCPCloseWaitTimeout: String?
        @Option(name: .key(.conntrackTCPClosingTimeout), help: .key(.conntrackTCPClosingTimeout)) var conntrackTCPClosingTimeout: String?
        @Option(name: .key(.conntrackUDPTimeout), help: .key(.conntrackUDPTimeout)) var conntrackUDPTimeout: String?
        @Option(name: .key(.conntrackUDPRepliedTimeout), help: .key(.conntrackUDPRepliedTimeout)) var conntrackUDPRepliedTimeout: String?
        @Option(name: .key(.conntrackICMPTimeout), help: .key(.conntrackICMPTimeout)) var conntrackICMPTimeout: String?
        @Option(name: .key(.conntrackGCInterval), help: .key(.conntrackGCInterval)) var conntrackGCInterval: String?

        @Option(name: .customLong("bpf-object"), help: ArgumentHelp("Load this BPF object instead of the embedded one (debugging).", visibility: .hidden))
        var bpfObject: String?

        public init() {}

        /// The settings given as flags, by config key.
        func flagSettings() -> [ConfigKey: RawSetting] {
            let keys = Dictionary(uniqueKeysWithValues: ConfigKey.allCases.map { ("_\($0)", $0) })
            var settings: [ConfigKey: RawSetting] = [:]
            for child in Mirror(reflecting: self).children {
                guard let label = child.label, let key = keys[label] else { continue }
                switch child.value {
                case let option as Option<String?>:
                    if let text = option.wrappedValue { settings[key] = .scalar(text) }
                case let option as Option<[String]>:
                    // Each flag's text as if all were one comma-separated flag.
                    if !option.wrappedValue.isEmpty { settings[key] = .scalar(option.wrappedValue.joined(separator: ",")) }
                default:
                    continue
                }
            }
            return settings
        }

        /// The effective config: defaults, the file, then the flags.
        func effectiveConfig() throws(ConfigErrors) -> DaemonConfig {
            try Self.effectiveConfig(file: config, flags: flagSettings())
        }

        static func effectiveConfig(file path: String?, flags: [ConfigKey: RawSetting]) throws(ConfigErrors) -> DaemonConfig {
            let file = try path.map { path throws(ConfigErrors) in try ConfigFile.load(path: path) } ?? [:]
            return try DaemonConfig(file: file, flags: flags)
        }

        /// Every API connection and every pinned map is a file descriptor, and the usual soft
        /// limit (1024) is below what the API's connection limits allow: raise it to the hard
        /// limit, as Go programs (Cilium among them) do at start.
        static func raiseFileLimit() {
            var limit = rlimit()
            let resource = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
            guard getrlimit(resource, &limit) == 0, limit.rlim_cur < limit.rlim_max else { return }
            limit.rlim_cur = limit.rlim_max
            setrlimit(resource, &limit)
        }

        public func run() async throws {
            let config: DaemonConfig
            do {
                config = try effectiveConfig()
            } catch {
                for problem in error.errors {
                    FileHandle.standardErrorLine("masqd: config: \(problem)")
                }
                throw ExitCode(2)
            }
            var objectBytes: [UInt8]?
            if let path = bpfObject {
                guard let data = FileManager.default.contents(atPath: path) else {
                    FileHandle.standardErrorLine("masqd: --bpf-object: \(path) cannot be read")
                    throw ExitCode(2)
                }
                objectBytes = [UInt8](data)
            }
            let logger = makeLogger(level: config.logLevel)
            Self.raiseFileLimit()
            do {
                try ControlServices.checkSocketPath(config)
                try ControlServices.checkMetricsAddress(config)
                try await MasqDaemon.run(
                    config: config, objectBytes: objectBytes, logger: logger,
                    reloadConfig: { [file = self.config, flags = flagSettings()] () throws(ConfigErrors) in
                        try Self.effectiveConfig(file: file, flags: flags)
                    },
                    control: { datapath, status, events in
                        try ControlServices.make(datapath: datapath, status: status, events: events, config: config, logger: logger)
                    })
            } catch {
                logger.error("masqd stopped on an error", metadata: ["error": "\(error)"])
                throw ExitCode(1)
            }
        }
    }
}
