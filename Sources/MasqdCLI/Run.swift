@preconcurrency import Glibc
import ArgumentParser
import ControlServer
import Daemon
import Foundation
import Logging

extension MasqdCommand {
    /// `masqd run`: load the datapath, attach it, keep it reconciled until SIGTERM.
    public struct Run: AsyncParsableCommand {
        public static let configuration = CommandConfiguration(
            abstract: "Run the daemon (the default). Every config key is also a flag; flags win over the file."
        )

        @Option(help: "The daemon's config file (YAML or JSON, keys as the flags below).")
        var config: String?

        @Option(name: .customLong("enable-ipv4-masquerade"), help: "Masquerade IPv4 traffic (true or false; default true).")
        var enableIPv4Masquerade: String?

        @Option(name: .customLong("enable-ipv6-masquerade"), help: "Masquerade IPv6 traffic (true or false; default true).")
        var enableIPv6Masquerade: String?

        @Option(name: .customLong("ipv4-native-routing-cidr"), help: "IPv4 destinations routed without masquerading (replaces the pod-CIDR exclusion).")
        var ipv4NativeRoutingCIDR: String?

        @Option(name: .customLong("ipv6-native-routing-cidr"), help: "IPv6 destinations routed without masquerading.")
        var ipv6NativeRoutingCIDR: String?

        @Option(name: .customLong("pod-cidrs"), help: "Comma-separated CIDRs whose traffic is masqueraded (required).")
        var podCIDRs: String?

        @Option(name: .customLong("devices"), help: "Comma-separated masquerading devices, exact or prefix ('eth+'); empty: the devices with a default route.")
        var devices: String?

        @Option(name: .customLong("enable-ip-masq-agent"), help: "Apply the ip-masq-agent non-masquerade list (true or false; default false).")
        var enableIPMasqAgent: String?

        @Option(name: .customLong("ip-masq-agent-config-path"), help: "The ip-masq-agent config file.")
        var ipMasqAgentConfigPath: String?

        @Option(name: .customLong("cluster-node-ips"), help: "Comma-separated addresses of the other cluster nodes, never masqueraded to.")
        var clusterNodeIPs: String?

        @Option(name: .customLong("snat-port-range"), help: "Source ports masqueraded flows may take, LOW-HIGH (default 32768-65535).")
        var snatPortRange: String?

        @Option(name: .customLong("nat-max-entries"), help: "Size of the NAT table in entries (default 524288).")
        var natMaxEntries: String?

        @Option(name: .customLong("socket-path"), help: "The control API's Unix socket (default /run/masq/masqd.sock).")
        var socketPath: String?

        @Option(name: .customLong("socket-group"), help: "The group that owns the control socket.")
        var socketGroup: String?

        @Option(name: .customLong("prometheus-serve-addr"), help: "Also serve /metrics and /healthz over TCP at this address (:9962, 127.0.0.1:9962; default empty: off).")
        var prometheusServeAddr: String?

        @Option(name: .customLong("bpffs-root"), help: "Where maps and links are pinned (default /sys/fs/bpf/masq).")
        var bpffsRoot: String?

        @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical (default info).")
        var logLevel: String?

        @Option(name: .customLong("attach-mode"), help: "auto, tcx (Linux 6.6+) or tc (clsact); default auto.")
        var attachMode: String?

        @Option(name: .customLong("conntrack-tcp-syn-timeout"), help: "How long a TCP flow waits for its handshake to complete (duration such as 60s; default 60s).")
        var conntrackTCPSynTimeout: String?

        @Option(name: .customLong("conntrack-tcp-established-timeout"), help: "How long an idle established TCP flow lives (default 6h).")
        var conntrackTCPEstablishedTimeout: String?

        @Option(name: .customLong("conntrack-tcp-fin-wait-timeout"), help: "How long a TCP flow lives after one side's FIN until the other side answers (default 2m).")
        var conntrackTCPFinWaitTimeout: String?

        @Option(name: .customLong("conntrack-tcp-close-wait-timeout"), help: "How long an idle half-closed TCP flow lives once the FIN was answered (default 1m).")
        var conntrackTCPCloseWaitTimeout: String?

        @Option(name: .customLong("conntrack-tcp-closing-timeout"), help: "How long a TCP flow lives once both sides sent a FIN, or after an in-window RST (default 10s).")
        var conntrackTCPClosingTimeout: String?

        @Option(name: .customLong("conntrack-udp-timeout"), help: "How long an idle UDP flow lives before any reply (default 30s).")
        var conntrackUDPTimeout: String?

        @Option(name: .customLong("conntrack-udp-replied-timeout"), help: "How long an idle UDP flow lives once replies were seen (default 2m).")
        var conntrackUDPRepliedTimeout: String?

        @Option(name: .customLong("conntrack-icmp-timeout"), help: "How long an idle ICMP echo flow lives (default 30s).")
        var conntrackICMPTimeout: String?

        @Option(name: .customLong("conntrack-gc-interval"), help: "The longest time between two conntrack GC passes; they come sooner when many flows expire or ports run short (default 1m).")
        var conntrackGCInterval: String?

        @Option(name: .customLong("bpf-object"), help: ArgumentHelp("Load this BPF object instead of the embedded one (debugging).", visibility: .hidden))
        var bpfObject: String?

        public init() {}

        /// The settings given as flags, by config key.
        func flagSettings() -> [ConfigKey: RawSetting] {
            let values: [ConfigKey: String?] = [
                .enableIPv4Masquerade: enableIPv4Masquerade, .enableIPv6Masquerade: enableIPv6Masquerade,
                .ipv4NativeRoutingCIDR: ipv4NativeRoutingCIDR, .ipv6NativeRoutingCIDR: ipv6NativeRoutingCIDR,
                .podCIDRs: podCIDRs, .devices: devices, .enableIPMasqAgent: enableIPMasqAgent,
                .ipMasqAgentConfigPath: ipMasqAgentConfigPath,
                .clusterNodeIPs: clusterNodeIPs, .snatPortRange: snatPortRange, .natMaxEntries: natMaxEntries,
                .socketPath: socketPath, .socketGroup: socketGroup, .prometheusServeAddr: prometheusServeAddr,
                .bpffsRoot: bpffsRoot,
                .logLevel: logLevel, .attachMode: attachMode,
                .conntrackTCPSynTimeout: conntrackTCPSynTimeout, .conntrackTCPEstablishedTimeout: conntrackTCPEstablishedTimeout,
                .conntrackTCPFinWaitTimeout: conntrackTCPFinWaitTimeout, .conntrackTCPCloseWaitTimeout: conntrackTCPCloseWaitTimeout,
                .conntrackTCPClosingTimeout: conntrackTCPClosingTimeout, .conntrackUDPTimeout: conntrackUDPTimeout,
                .conntrackUDPRepliedTimeout: conntrackUDPRepliedTimeout, .conntrackICMPTimeout: conntrackICMPTimeout,
                .conntrackGCInterval: conntrackGCInterval,
            ]
            return values.compactMapValues { $0.map(RawSetting.scalar) }
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
                try await MasqDaemon.run(
                    config: config, objectBytes: objectBytes, logger: logger,
                    reloadConfig: { [file = self.config, flags = flagSettings()] () throws(ConfigErrors) in
                        try Self.effectiveConfig(file: file, flags: flags)
                    },
                    control: { datapath, status in
                        try ControlServices.make(datapath: datapath, status: status, config: config, logger: logger)
                    })
            } catch {
                logger.error("masqd stopped on an error", metadata: ["error": "\(error)"])
                throw ExitCode(1)
            }
        }
    }
}
