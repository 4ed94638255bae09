/// `GET /v1/config`: the daemon's effective config and the ip-masq-agent config in force.
public struct ConfigResponse: Codable, Sendable, Equatable {
    public var daemon: Daemon
    public var ipMasqAgent: IPMasqAgent

    public init(daemon: Daemon, ipMasqAgent: IPMasqAgent) {
        self.daemon = daemon
        self.ipMasqAgent = ipMasqAgent
    }

    /// Every config key (`masqd --help` and the config file spell them in kebab-case).
    public struct Daemon: Codable, Sendable, Equatable {
        public var enableIPv4Masquerade: Bool
        public var enableIPv6Masquerade: Bool
        public var ipv4NativeRoutingCIDR: IPPrefix?
        public var ipv6NativeRoutingCIDR: IPPrefix?
        public var podCIDRs: [IPPrefix]
        public var devices: [String]
        public var enableIPMasqAgent: Bool
        public var ipMasqAgentConfigPath: String
        public var clusterNodeIPs: [IPAddress]
        /// "LOW-HIGH".
        public var snatPortRange: String
        public var natMaxEntries: UInt32
        public var socketPath: String
        public var socketGroup: String?
        /// Where /metrics and /healthz are also served over TCP; absent: not.
        public var prometheusServeAddr: String?
        public var bpffsRoot: String
        public var logLevel: String
        public var attachMode: String
        /// The `conntrack-*` keys, in seconds.
        public var conntrack: Conntrack

        public init(enableIPv4Masquerade: Bool, enableIPv6Masquerade: Bool, ipv4NativeRoutingCIDR: IPPrefix?,
                    ipv6NativeRoutingCIDR: IPPrefix?, podCIDRs: [IPPrefix], devices: [String], enableIPMasqAgent: Bool,
                    ipMasqAgentConfigPath: String, clusterNodeIPs: [IPAddress],
                    snatPortRange: String, natMaxEntries: UInt32, socketPath: String, socketGroup: String?,
                    prometheusServeAddr: String? = nil, bpffsRoot: String, logLevel: String, attachMode: String, conntrack: Conntrack) {
            self.enableIPv4Masquerade = enableIPv4Masquerade
            self.enableIPv6Masquerade = enableIPv6Masquerade
            self.ipv4NativeRoutingCIDR = ipv4NativeRoutingCIDR
            self.ipv6NativeRoutingCIDR = ipv6NativeRoutingCIDR
            self.podCIDRs = podCIDRs
            self.devices = devices
            self.enableIPMasqAgent = enableIPMasqAgent
            self.ipMasqAgentConfigPath = ipMasqAgentConfigPath
            self.clusterNodeIPs = clusterNodeIPs
            self.snatPortRange = snatPortRange
            self.natMaxEntries = natMaxEntries
            self.socketPath = socketPath
            self.socketGroup = socketGroup
            self.prometheusServeAddr = prometheusServeAddr
            self.bpffsRoot = bpffsRoot
            self.logLevel = logLevel
            self.attachMode = attachMode
            self.conntrack = conntrack
        }

        /// Each field with its config key and its value as the config file spells them.
        public var keyedValues: [(key: String, value: ConfigFileValue)] {
            func list<T: CustomStringConvertible>(_ items: [T]) -> ConfigFileValue { .list(items.map(\.description)) }
            func optional<T: CustomStringConvertible>(_ value: T?) -> ConfigFileValue { value.map { .scalar($0.description) } ?? .unset }
            func duration(_ seconds: Double) -> ConfigFileValue { .scalar(DurationText.format(seconds: seconds)) }
            return [
                ("enable-ipv4-masquerade", .scalar(String(enableIPv4Masquerade))),
                ("enable-ipv6-masquerade", .scalar(String(enableIPv6Masquerade))),
                ("ipv4-native-routing-cidr", optional(ipv4NativeRoutingCIDR)),
                ("ipv6-native-routing-cidr", optional(ipv6NativeRoutingCIDR)),
                ("pod-cidrs", list(podCIDRs)),
                ("devices", list(devices)),
                ("enable-ip-masq-agent", .scalar(String(enableIPMasqAgent))),
                ("ip-masq-agent-config-path", .scalar(ipMasqAgentConfigPath)),
                ("cluster-node-ips", list(clusterNodeIPs)),
                ("snat-port-range", .scalar(snatPortRange)),
                ("nat-max-entries", .scalar(String(natMaxEntries))),
                ("socket-path", .scalar(socketPath)),
                ("socket-group", optional(socketGroup)),
                ("prometheus-serve-addr", optional(prometheusServeAddr)),
                ("bpffs-root", .scalar(bpffsRoot)),
                ("log-level", .scalar(logLevel)),
                ("attach-mode", .scalar(attachMode)),
                ("conntrack-tcp-syn-timeout", duration(conntrack.tcpSynTimeout)),
                ("conntrack-tcp-established-timeout", duration(conntrack.tcpEstablishedTimeout)),
                ("conntrack-tcp-fin-wait-timeout", duration(conntrack.tcpFinWaitTimeout)),
                ("conntrack-tcp-close-wait-timeout", duration(conntrack.tcpCloseWaitTimeout)),
                ("conntrack-tcp-closing-timeout", duration(conntrack.tcpClosingTimeout)),
                ("conntrack-udp-timeout", duration(conntrack.udpTimeout)),
                ("conntrack-udp-replied-timeout", duration(conntrack.udpRepliedTimeout)),
                ("conntrack-icmp-timeout", duration(conntrack.icmpTimeout)),
                ("conntrack-gc-interval", duration(conntrack.gcInterval)),
            ]
        }
    }

    /// Flow lifetimes and the GC's longest interval, in seconds.
    public struct Conntrack: Codable, Sendable, Equatable {
        public var tcpSynTimeout: Double
        public var tcpEstablishedTimeout: Double
        public var tcpFinWaitTimeout: Double
        public var tcpCloseWaitTimeout: Double
        public var tcpClosingTimeout: Double
        public var udpTimeout: Double
        public var udpRepliedTimeout: Double
        public var icmpTimeout: Double
        public var gcInterval: Double

        public init(tcpSynTimeout: Double, tcpEstablishedTimeout: Double, tcpFinWaitTimeout: Double,
                    tcpCloseWaitTimeout: Double, tcpClosingTimeout: Double,
                    udpTimeout: Double, udpRepliedTimeout: Double, icmpTimeout: Double, gcInterval: Double) {
            self.tcpSynTimeout = tcpSynTimeout
            self.tcpEstablishedTimeout = tcpEstablishedTimeout
            self.tcpFinWaitTimeout = tcpFinWaitTimeout
            self.tcpCloseWaitTimeout = tcpCloseWaitTimeout
            self.tcpClosingTimeout = tcpClosingTimeout
            self.udpTimeout = udpTimeout
            self.udpRepliedTimeout = udpRepliedTimeout
            self.icmpTimeout = icmpTimeout
            self.gcInterval = gcInterval
        }
    }

    /// The ip-masq-agent config as last loaded (nil fields: not loaded, or the agent is off).
    public struct IPMasqAgent: Codable, Sendable, Equatable {
        public var enabled: Bool
        public var configPath: String
        public var generation: Int
        public var lastError: String?
        /// The non-masquerade list in force (with defaults and link-local ranges applied).
        public var nonMasqueradeCIDRs: [IPPrefix]

        public init(enabled: Bool, configPath: String, generation: Int, lastError: String?, nonMasqueradeCIDRs: [IPPrefix]) {
            self.enabled = enabled
            self.configPath = configPath
            self.generation = generation
            self.lastError = lastError
            self.nonMasqueradeCIDRs = nonMasqueradeCIDRs
        }
    }
}

/// A config key's value as masqd's config file spells it.
public enum ConfigFileValue: Sendable, Equatable {
    case scalar(String)
    case list([String])
    /// Not set (YAML null).
    case unset
}

/// Durations as Go, Cilium and masqd's config file write them.
public enum DurationText {
    /// 21600 as "6h", 5400 as "1h30m", 0.5 as "500ms"; a value finer than a millisecond as
    /// plain seconds ("0.0001s"). masqd's config parser reads every form back.
    public static func format(seconds: Double) -> String {
        let milliseconds = (seconds * 1000).rounded()
        guard seconds.isFinite, seconds >= 0, abs(milliseconds - seconds * 1000) < 1e-6,
              milliseconds < Double(Int64.max) else {
            return "\(seconds)s"
        }
        var rest = Int64(milliseconds)
        var text = ""
        for (unit, size) in [("h", Int64(3_600_000)), ("m", 60_000), ("s", 1000), ("ms", 1)] where rest >= size {
            text += "\(rest / size)\(unit)"
            rest %= size
        }
        return text.isEmpty ? "0s" : text
    }
}
